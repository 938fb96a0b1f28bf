"""`omnidit distill --teacher shapes --method guidance|consistency|dmd --steps 4 --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from omnidit.cli.common import ConfigFlags, UserError, positive_int

HELP = "step-distil a model: guidance (one forward per step) or consistency (few steps)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from omnidit.distill.loop import METHODS, DistillConfig

    c = ConfigFlags(p, DistillConfig)
    c.add("--teacher", help="shipped model name or model folder to distil")
    c.add("--method", choices=METHODS,
          help="guidance: one forward per step; consistency: few steps along the teacher's ODE; "
               "dmd: few steps matching the teacher's distribution (DMD2-style, no GAN term)")
    c.add("--steps", type=positive_int("--steps"), help="consistency, dmd: the student's default sampling steps")
    c.add("--fake-updates", type=positive_int("--fake-updates"),
          help="dmd: fake-score updates per student update (two time-scale rule)")
    c.add("--phases", type=positive_int("--phases"),
          help="consistency: 1 = multistep x0 prediction (serves any step count); K = K phases, sampled in K steps")
    p.add_argument("--out", default=None, help="model folder to write (default: runs/distill/<teacher>-<method>/model)")
    p.add_argument("--run", default=None, help="checkpoint folder, resumed when run again (default: beside --out)")
    c.add("--minutes", field="max_minutes", help="wall-clock budget; 0: none (then give --max-steps)")
    c.add("--max-steps")
    c.add("--lr")
    c.add("--data", choices=("cache", "online"),
          help="cache: chunks from `omnidit train cache --vae <teacher>/vae`; online: render each batch")
    p.add_argument("--cache", default=str(Path(DistillConfig.image_cache).parent),
                   help="--data cache: folder with images/ (and videos/) (default: %(default)s)")
    c.add("--image-batch", type=positive_int("--image-batch"))
    c.add("--video-batch", type=positive_int("--video-batch"))
    c.add("--video-every", help="one video batch after every N image batches (0: none)")
    c.add("--workers", help="--data online: rendering processes per stream")
    c.add("--init-student", help="start the student from this exported student folder instead of the teacher")
    c.add("--text-encoder", help="a local sentence-encoder folder to use instead of the teacher's")
    c.add("--eval-every", help="adherence check of the student every N steps (0: off)")
    c.add("--eval-n", type=positive_int("--eval-n"))
    c.add("--seed")
    p.set_defaults(func=run, config_flags=c)


def run(args: argparse.Namespace) -> int:
    from omnidit.distill.loop import train_distill

    if args.max_minutes <= 0 and args.max_steps is None:
        raise UserError(f"--minutes must be > 0, got {args.max_minutes}")
    label = Path(str(args.teacher)).name or "teacher"
    out = Path(args.out) if args.out else Path("runs/distill") / f"{label}-{args.method}" / "model"
    run_dir = Path(args.run) if args.run else out.parent / f"{out.name}.run"
    cache = Path(args.cache)
    try:
        cfg = args.config_flags.build(  # validates the arguments first
            args, out=str(out), run=str(run_dir), image_cache=str(cache / "images"),
            video_cache=str(cache / "videos"), max_minutes=args.max_minutes if args.max_minutes > 0 else None)
        if args.data == "cache" and not (cache / "images").is_dir():
            raise UserError(f"--cache {args.cache!r} has no images/ (run `omnidit train cache --vae <teacher>/vae` "
                            "first, or use --data online)")
        folder = train_distill(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {folder}")
    return 0
