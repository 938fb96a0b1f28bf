"""`--weights fp8|bf16|fp32` and `--offload none|blocks` for `generate`, `serve` and `batch`
(the choices live in omnidit/dit/fp8.py and omnidit/dit/offload.py; see omnidit/pipeline_memory.py)."""

from __future__ import annotations

import argparse

from omnidit.cli.common import ConfigFlags

WEIGHTS_HELP = ("the DiT's weight storage: fp8 (block linears in float8 e4m3 with per-channel scales, ~0.5x "
                "bf16's bytes), bf16 or fp32 (default: the compute dtype, fp32 on CPU, bf16 on CUDA)")
OFFLOAD_HELP = ("blocks: the DiT's blocks stay in host memory and visit the GPU two at a time (prefetched), "
                "the text encoder and VAE wait on the host while the DiT runs; for a GPU smaller than the model")


def add_memory_args(p: argparse.ArgumentParser, flags: ConfigFlags | None = None) -> None:
    """The two flags; with `flags` (a command's config dataclass) their defaults are its fields'."""
    from omnidit.dit.fp8 import WEIGHTS
    from omnidit.dit.offload import OFFLOAD

    if flags is not None:
        flags.add("--weights", choices=WEIGHTS, help=WEIGHTS_HELP)
        flags.add("--offload", choices=OFFLOAD, help=OFFLOAD_HELP)
        return
    p.add_argument("--weights", choices=WEIGHTS, default=None, help=WEIGHTS_HELP)
    p.add_argument("--offload", choices=OFFLOAD, default="none", help=OFFLOAD_HELP + " (default: %(default)s)")
