"""`omnidit eval --i2v`: the model's image-to-video on the shapes world (omnidit/shapes/i2v_eval.py): --n
seeded video prompts, each started from its scene's first rendered frame, against text-to-video."""

from __future__ import annotations

import argparse

from omnidit.cli.common import UserError

ROWS = (
    ("first-frame PSNR vs VAE round trip (dB)", "first_frame_psnr_vs_round_trip", "db"),
    ("  worst video (dB)", "first_frame_psnr_min", "db"),
    ("first-frame PSNR vs the image (dB)", "first_frame_psnr_vs_image", "db"),
    ("frame 1 PSNR vs the image (dB)", "junction_psnr", "db"),
    ("motion (follows the words)", "motion", "pct"),
    ("colour", "colour", "pct"),
    ("position", "position", "pct"),
    ("shape", "shape", "pct"),
    ("all attributes", "all", "pct"),
    ("seconds per video", "seconds_per_sample", "s"),
)


def format_i2v(r: dict) -> str:
    head = (
        f"model {r['model']}  steps {r['steps']}  sampler {r['sampler']}  n={r['n']} videos of "
        f"{r['frames']} frames at {r['size']}x{r['size']}"
    )
    lines = [head, f"{'':42s} {'image-to-video':>15s} {'text-to-video':>15s}"]
    fmt = {
        "pct": lambda v: f"{100 * v:.1f}%",
        "db": lambda v: f"{v:.2f}",
        "s": lambda v: f"{v:.3f}",
    }
    for label, key, kind in ROWS:
        cells = [
            "-" if r[mode].get(key) is None else fmt[kind](r[mode][key])
            for mode in ("i2v", "t2v")
        ]
        lines.append(f"{label:42s} {cells[0]:>15s} {cells[1]:>15s}")
    return "\n".join(lines)


def run_i2v(args: argparse.Namespace, pipe, call: dict) -> int:
    from omnidit.cli.eval_report import report
    from omnidit.shapes.adherence import VIDEO_FRAMES, eval_prompts
    from omnidit.shapes.i2v_eval import eval_i2v

    if args.n < 1:
        raise UserError("--i2v scores --n videos: give --n >= 1")
    if args.prompts or getattr(args, "word", None):
        raise UserError(
            "--i2v uses seeded video prompts of the base grammar: drop --prompts/--word"
        )
    prompts = eval_prompts(
        args.n, seed=args.seed + 1, video=True
    )  # the seed of eval's video set
    r = {
        "model": pipe.name,
        "steps": call.get("steps") or pipe.config.steps,
        "sampler": pipe.config.sampler,
        "seed": args.seed,
    }
    r.update(
        eval_i2v(
            pipe,
            prompts,
            frames=VIDEO_FRAMES,
            size=args.size,
            seed=args.seed,
            batch_size=args.batch_size,
            **call,
        )
    )
    return report(format_i2v(r), r, args.json)
