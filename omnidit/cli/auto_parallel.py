"""`--parallel auto` for `omnidit generate`: the planner (omnidit/parallel/memory.py) picks the degrees,
the weights and the offload for the GPUs this run has, and the flags are set from its plan.

The GPUs found: under torchrun, its WORLD_SIZE processes (one GPU each); otherwise one process (one GPU, or
the CPU, where the plan says so and changes nothing). Flags given explicitly (--weights, --offload) win.
"""

from __future__ import annotations

import argparse
import os


def add_auto_parallel_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parallel", choices=("manual", "auto"), default="manual",
                   help="auto: the planner picks Ulysses/Ring/CFG degrees, weights and offload for the GPUs found "
                        "(torchrun's processes, else one); manual: the degree flags as given (default)")


def apply_plan(args: argparse.Namespace, device, *, model: str | None = None, gpus: int | None = None) -> str | None:
    """With --parallel auto, set args' degrees/weights/offload from the plan; the line to print (None: manual).
    `model` (default args.model) at args' size or its own default; `gpus` (default: torchrun's WORLD_SIZE)."""
    if getattr(args, "parallel", "manual") != "auto":
        return None
    import torch

    from omnidit.dit.checkpoint import read_config
    from omnidit.model_folder import open_model
    from omnidit.parallel.memory import ModelMemory, choose, workload_of
    from omnidit.parallel.planner import Hardware

    world = gpus if gpus is not None else int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if not cuda:
        if world > 1:
            raise ValueError("--parallel auto plans GPUs; on CPU give the degree flags (gloo) instead")
        return "parallel auto: CPU, 1 process (the plan is for GPUs: nothing to split)"
    folder = open_model(model if model is not None else args.model)
    model = ModelMemory.from_folder(folder.path)
    cfg = read_config(folder.transformer_dir)
    sampling = folder.sampling(cfg.guidance_embeds)
    size = dict(frames=getattr(args, "frames", None) or sampling.frames,
                height=getattr(args, "height", None) or sampling.height,
                width=getattr(args, "width", None) or sampling.width)
    w = workload_of(cfg, spatial_ratio=model.spatial_ratio, temporal_ratio=model.temporal_ratio,
                    true_cfg=sampling.guidance_mode == "cfg", **size)
    memory_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    p = choose(model, w, world, hw=Hardware(memory_gb=memory_gb), **size)
    c = p.row.config
    args.ulysses_degree, args.ring_degree, args.cfg_parallel = c.ulysses_degree, c.ring_degree, c.cfg_degree == 2
    if args.weights is None:
        args.weights = p.weights
    if args.offload == "none":
        args.offload = p.offload
    fits = "" if p.fits else " (the estimate does not fit: expect out-of-memory)"
    hint = " (run under torchrun --nproc-per-node K to use K GPUs)" if gpus is None and world == 1 \
        and torch.cuda.device_count() > 1 else ""
    return (f"parallel auto: {world} GPU(s) of {memory_gb:.0f} GB: ulysses {c.ulysses_degree}, ring {c.ring_degree}, "
            f"cfg {c.cfg_degree}, weights {args.weights}, offload {args.offload}, est. peak {p.memory_gb:.1f} GB"
            f"{fits}{hint}")

