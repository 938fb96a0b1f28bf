"""`omnidit eval`: prompt adherence of a model on the shapes world, per attribute, and its speed."""

from __future__ import annotations

import json
from pathlib import Path


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="prompt adherence on the shapes world (per attribute) and seconds per sample")
    p.add_argument("--model", default=None, help="shipped model name or folder (default: the embedded model)")
    p.add_argument("--prompts", default=None, help="a text file, one prompt per line (default: --n seeded prompts)")
    p.add_argument("--n", type=int, default=200, help="number of seeded random prompts (images and videos each)")
    p.add_argument("--videos", type=int, default=None, help="number of video prompts (default: --n / 4)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=1000, help="seed of the prompt list and of the noise")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--teacher", default=None,
                   help="compare --model (a distilled student) with this teacher: the teacher at its default steps, "
                        "the teacher at --steps, the student at --steps; paired PSNR/SSIM, diversity, speed")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (the machine BENCHMARKS.md reports) or cuda")
    p.add_argument("--text-encoder", default=None,
                   help="a local sentence-encoder folder to use instead of the models' own (offline GPU boxes)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from omnidit.cli import UserError
    from omnidit.pipeline import Pipeline
    from omnidit.shapes import parse_prompt
    from omnidit.shapes.adherence import VIDEO_FRAMES, eval_pipeline, eval_prompts

    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    load = dict(device=args.device, text_encoder=args.text_encoder)
    try:
        pipe = Pipeline.from_pretrained(args.model, **load)
        teacher = Pipeline.from_pretrained(args.teacher, **load) if args.teacher else None
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise UserError(f"--prompts {args.prompts!r} does not exist")
        images = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        for i, p in enumerate(images):
            try:
                parse_prompt(p)
            except ValueError as e:
                raise UserError(f"--prompts line {i + 1}: {e}") from None
        videos: list[str] = []
    else:
        images = eval_prompts(args.n, seed=args.seed, video=False)
        n_videos = args.n // 4 if args.videos is None else args.videos
        videos = eval_prompts(n_videos, seed=args.seed + 1, video=True)
    if teacher is not None:
        return _compare(args, pipe, teacher, images, videos)
    common = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, height=args.size, width=args.size,
                  batch_size=args.batch_size)
    try:
        results = {"model": pipe.name, "steps": args.steps or pipe.config.steps,
                   "images": eval_pipeline(pipe, images, frames=1, **common)}
        if videos:
            results["videos"] = eval_pipeline(pipe, videos, frames=VIDEO_FRAMES, **common)
    except ValueError as e:
        raise UserError(str(e)) from None
    return _report(format_results(results), results, args.json)


def _report(text: str, results: dict, json_path: str | None) -> int:
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _compare(args, student, teacher, images: list[str], videos: list[str]) -> int:
    from omnidit.cli import UserError
    from omnidit.distill.compare import compare_models
    from omnidit.shapes.adherence import VIDEO_FRAMES

    steps = args.steps or student.config.steps
    results = {"student": student.name, "teacher": teacher.name, "steps": steps}
    try:
        for kind, prompts, frames in (("images", images, 1), ("videos", videos, VIDEO_FRAMES)):
            if prompts:
                results[kind] = compare_models(student, teacher, prompts, frames=frames, steps=steps, seed=args.seed,
                                               batch_size=args.batch_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    return _report(format_comparison(results), results, args.json)


def format_comparison(results: dict) -> str:
    lines = [f"student {results['student']} vs teacher {results['teacher']}"]
    for kind in ("images", "videos"):
        rows = results.get(kind)
        if not rows:
            continue
        ref = rows["teacher_default"]
        for name, r in rows.items():
            keep = "  ".join(
                f"{k} {100 * v:.1f}%" + (f" ({100 * v / ref['scores'][k]:.0f}% of teacher)"
                                          if name != "teacher_default" and ref["scores"].get(k) else "")
                for k, v in r["scores"].items())
            sim = (f"  PSNR {r['psnr_vs_teacher']:.2f} dB  SSIM {r['ssim_vs_teacher']:.3f}"
                   if "psnr_vs_teacher" in r else "")
            lines.append(f"{kind:6s} {name:18s} steps {r['steps']:<3d} {r['seconds_per_sample']:.3f} s/sample"
                         f"  diversity {r['diversity']:.3f}{sim}")
            lines.append(f"       {keep}")
    return "\n".join(lines)


def format_results(results: dict) -> str:
    lines = [f"model {results['model']}  steps {results['steps']}"]
    for kind in ("images", "videos"):
        r = results.get(kind)
        if not r:
            continue
        scores = "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["scores"].items())
        lines.append(f"{kind:6s} n={r['n']:<4d} {r['seconds_per_sample']:.3f} s/sample  {scores}")
    return "\n".join(lines)
