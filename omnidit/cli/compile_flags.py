"""`--compile [BACKEND]` for `generate`, `serve` and `batch`: regional torch.compile of the DiT's
repeated blocks (omnidit/dit/compile.py). Without a value it is inductor; `aot_eager` and `eager`
trace the same graphs without generating kernels (for debugging a model that fails to compile)."""

from __future__ import annotations

import argparse

from omnidit.cli.common import ConfigFlags

COMPILE_HELP = ("compile each repeated DiT block once with torch.compile (regional; the first generation of "
                "each size pays the compile time); BACKEND: inductor (the default), aot_eager or eager")


def add_compile_args(p: argparse.ArgumentParser, flags: ConfigFlags | None = None) -> None:
    """--compile [BACKEND]; with `flags` (a command's config dataclass) its default is the `compile` field's."""
    from omnidit.dit.compile import BACKENDS

    options = {"nargs": "?", "const": "inductor", "choices": BACKENDS, "metavar": "BACKEND", "help": COMPILE_HELP}
    if flags is not None:
        flags.add("--compile", **options)
        return
    p.add_argument("--compile", default=None, **options)
