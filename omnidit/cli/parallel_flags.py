"""Sequence-parallel flags of `omnidit generate` and `serve`, and the torchrun launch `generate` needs.

    torchrun --nproc-per-node K -m omnidit generate PROMPT ... --ulysses-degree U --ring-degree R [--cfg-parallel]

K must equal U x R x (2 if --cfg-parallel else 1). Every process loads the model and runs the same
generation (text encoded once, on rank 0, and broadcast); rank 0 writes the output.
Backend: gloo on CPU, NCCL on CUDA (each process on cuda:LOCAL_RANK).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from omnidit.cli.common import positive_int

if TYPE_CHECKING:  # torch stays unimported until a command runs: `omnidit --help` is instant
    import torch

    from omnidit.parallel import ParallelConfig, ParallelRuntime


def add_parallel_args(
    parser: argparse.ArgumentParser,
    title: str = "multi-process (under torchrun --nproc-per-node U*R*(2 if --cfg-parallel))",
) -> None:
    """--ulysses-degree U, --ring-degree R, --cfg-parallel (shared by `generate` and `serve`)."""
    g = parser.add_argument_group(title)
    g.add_argument("--ulysses-degree", type=positive_int("--ulysses-degree"), default=1,
                   help="split the video tokens U ways with all-to-all over heads (U must divide the heads)")
    g.add_argument("--ring-degree", type=positive_int("--ring-degree"), default=1,
                   help="split the video tokens R ways with ring attention (any R)")
    g.add_argument("--cfg-parallel", action="store_true",
                   help="conditional and unconditional branches on different processes (2x the processes)")


def parallel_config(args: argparse.Namespace) -> ParallelConfig:
    from omnidit.parallel import ParallelConfig

    return ParallelConfig(
        ulysses_degree=getattr(args, "ulysses_degree", 1),
        ring_degree=getattr(args, "ring_degree", 1),
        cfg_degree=2 if getattr(args, "cfg_parallel", False) else 1,
    )


def start_parallel(args: argparse.Namespace, device: torch.device | None) -> ParallelRuntime | None:
    """None for a plain single process; else join torchrun's process group and return the runtime.

    ValueError (a user error) when the flags and the number of processes disagree.
    """
    config = parallel_config(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.world_size == 1 and world == 1:
        return None
    if world != config.world_size:
        how = "run under torchrun" if world == 1 else f"this torchrun has {world} processes"
        raise ValueError(
            f"--ulysses-degree x --ring-degree x (2 if --cfg-parallel) = {config.ulysses_degree} x "
            f"{config.ring_degree} x {config.cfg_degree} = {config.world_size} processes needed; {how} "
            f"(torchrun --nproc-per-node {config.world_size} -m omnidit generate ...)"
        )
    if "MASTER_ADDR" not in os.environ or "RANK" not in os.environ:
        raise ValueError("WORLD_SIZE is set but RANK/MASTER_ADDR are not: launch with torchrun")
    from omnidit.parallel import ParallelRuntime, init_parallel

    return ParallelRuntime(init_parallel(config, device=_process_device(device)))


def _process_device(device: torch.device | None) -> torch.device:
    """cuda:LOCAL_RANK (one GPU per process) when CUDA is asked for or available, else CPU."""
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local} has no GPU: only {torch.cuda.device_count()} visible")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)

