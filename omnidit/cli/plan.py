"""`omnidit plan`: memory per GPU and the degrees, weights, offload and VAE tiling that fit (on paper)."""

from __future__ import annotations

import argparse
import json

from omnidit.cli.common import UserError, positive_int

HELP = "memory per GPU and the parallel degrees / weights / offload / VAE tiling that fit a generation"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="shipped model name or diffusers-format folder; 'hunyuan-video' for the 13B model on paper")
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT (default: %(default)s)")
    p.add_argument("--frames", type=positive_int("--frames"), default=129)
    p.add_argument("--gpus", type=positive_int("--gpus"), default=1)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU (default: %(default)s)")
    p.add_argument("--cfg", action="store_true", help="true CFG: two branches per step")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def parse_size(size: str) -> tuple[int, int]:
    w, sep, h = size.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise UserError(f"--size must be WIDTHxHEIGHT like 1280x720, got {size!r}")
    return int(w), int(h)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from omnidit.parallel.memory import ModelMemory, choose, report, workload_of
    from omnidit.parallel.planner import Hardware

    width, height = parse_size(args.size)
    if args.gpu_memory <= 0:
        raise UserError(f"--gpu-memory must be > 0 GB, got {args.gpu_memory:g}")
    if args.model == "hunyuan-video":
        from omnidit.dit import preset

        config, model = preset("hunyuan-video"), ModelMemory.hunyuan_video()
    else:
        from omnidit.dit.checkpoint import read_config
        from omnidit.model_folder import open_model

        try:
            folder = open_model(args.model)
            config, model = read_config(folder.transformer_dir), ModelMemory.from_folder(folder.path)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
    hw = replace(Hardware(), memory_gb=args.gpu_memory)
    kw = dict(frames=args.frames, height=height, width=width)
    w = workload_of(config, spatial_ratio=model.spatial_ratio, temporal_ratio=model.temporal_ratio,
                    true_cfg=args.cfg, **kw)
    try:
        p = choose(model, w, args.gpus, hw=hw, **kw)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        c = p.row.config
        print(json.dumps({"ulysses": c.ulysses_degree, "ring": c.ring_degree, "cfg": c.cfg_degree,
                          "weights": p.weights, "offload": p.offload, "vae_tiling": p.vae_tiling,
                          "dit_gb": p.dit_gb, "activations_gb": p.activations_gb,
                          "text_encoders_gb": p.text_encoders_gb, "vae_decode_gb": p.vae_decode_gb,
                          "peak_gb": p.memory_gb, "fits": p.fits, "step_s": p.step_s}))
    else:
        print(report(p, args.gpus, hw))
    return 0
