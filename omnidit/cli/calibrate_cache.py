"""`omnidit calibrate-cache --model M`: fit TeaCache's polynomial and MagCache's ratio curve for a model
and write them to its folder's cache.json (omnidit/pipeline_cache.py), used by every later load."""

from __future__ import annotations

import argparse
import json

from omnidit.cli.common import UserError, positive_int

HELP = "calibrate step caching (teacache, magcache) for a model; writes cache.json into its folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="shipped model name or diffusers-format folder (default: the embedded model)")
    p.add_argument("--steps", type=positive_int("--steps"), default=None,
                   help="denoising steps of the recorded runs (default: the model's own; other counts resample the curve)")
    p.add_argument("--prompts", default=None, help="a text file of prompts, one a line (default: a built-in varied set)")
    p.add_argument("--frames", type=positive_int("--frames"), default=1)
    p.add_argument("--height", type=positive_int("--height"), default=None)
    p.add_argument("--width", type=positive_int("--width"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder to write cache.json to (default: the model folder itself)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from omnidit.cli.generate import torch_device
    from omnidit.pipeline_cache import CALIBRATION_PROMPTS, calibrate_model

    prompts = CALIBRATION_PROMPTS
    if args.prompts is not None:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = tuple(line.strip() for line in f if line.strip())
        except OSError as e:
            raise UserError(f"--prompts: cannot read {args.prompts!r}: {e.strerror}") from None
        if not prompts:
            raise UserError(f"--prompts: {args.prompts!r} has no prompts")
    try:
        path, cal = calibrate_model(args.model, device=torch_device(args.device), out=args.out, prompts=prompts,
                                    steps=args.steps, frames=args.frames, height=args.height, width=args.width,
                                    seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    summary = {"path": str(path), "steps": cal["steps"], "generations": cal["generations"],
               "teacache_coefficients": len(cal["teacache"]["coefficients"])}
    print(json.dumps(summary))
    return 0
