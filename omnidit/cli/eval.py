"""`omnidit eval`: prompt adherence of a model on the shapes world, per attribute, and its speed.

Four modes share the prompts (--n seeded images and --videos videos, of the base grammar or of a
new --word, or --prompts) and the noise seeds, with the model's --lora adapters if any: the model
alone; the model under several sampling settings (--sweep); the model's eval latents decoded by
other VAEs (--decoder); a distilled student against its teacher (--teacher).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omnidit.cli.common import UserError, bounded_int, positive_int
from omnidit.cli.lora_flags import add_lora_args, load_loras, lora_specs

HELP = "prompt adherence on the shapes world (per attribute) and seconds per sample"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from omnidit.shapes.spec import NEW_SHAPES

    p.add_argument("--model", default=None, help="shipped model name or folder (default: the embedded model)")
    p.add_argument("--prompts", default=None, help="a text file, one prompt per line (default: --n seeded prompts)")
    p.add_argument("--n", type=bounded_int("--n", 0), default=200, help="number of seeded random image prompts")
    p.add_argument("--videos", type=bounded_int("--videos", 0), default=None,
                   help="number of seeded random video prompts (default: --n / 4)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the prompt list and of the noise")
    p.add_argument("--word", choices=NEW_SHAPES, default=None,
                   help="score seeded single-object prompts of this new word (a shape the base model never saw) "
                        "instead of the base grammar's; the shape column is then that word's adherence")
    add_lora_args(p)
    p.add_argument("--size", type=positive_int("--size"), default=64)
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=8)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--resume", action="store_true",
                   help="--sweep: keep the rows an earlier run wrote to --json and score only the rest")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (the machine BENCHMARKS.md reports) or cuda")
    from omnidit.cli.memory_flags import WEIGHTS_HELP
    from omnidit.dit.fp8 import WEIGHTS

    p.add_argument("--weights", choices=WEIGHTS, default=None, help=WEIGHTS_HELP)
    p.add_argument("--text-encoder", default=None,
                   help="a local sentence-encoder folder to use instead of the models' own (offline GPU boxes)")

    s = p.add_argument_group("sampling settings (default: the model's own)")
    s.add_argument("--steps", type=positive_int("--steps"), default=None, help="denoising steps")
    s.add_argument("--guidance", type=float, default=None, help="guidance scale")
    s.add_argument("--sampler", default=None, help="sampler name (euler, x0_renoise)")
    s.add_argument("--shift", type=float, default=None, help="flow-matching timestep shift (> 0)")
    s.add_argument("--cache", default=None, metavar="SPEC",
                   help='step cache: "none", "fbcache", "teacache" or "magcache", optionally ":<threshold>"')
    s.add_argument("--sweep", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="one more row with these settings on top of the flags' (keys sampler, shift, steps, "
                        "guidance, cache); repeat for more rows; rows after the first also get PSNR/SSIM "
                        "against its frames. Tune on a --seed other than the reported 1000")

    m = p.add_argument_group("other comparisons (one at a time)")
    m.add_argument("--teacher", default=None,
                   help="compare --model (a distilled student) with this teacher: the teacher at its default steps, "
                        "the teacher at --steps, the student at --steps; paired PSNR/SSIM, diversity, speed")
    m.add_argument("--decoder", action="append", default=[], metavar="VAE_DIR",
                   help="also score this VAE folder (the model's latent space) on the model's eval latents, "
                        "without sampling again; repeat for more")
    m.add_argument("--i2v", action="store_true",
                   help="image-to-video: --n seeded video prompts, each started from its scene's first rendered "
                        "frame; first-frame PSNR, motion, colour and position kept, against text-to-video")
    m.add_argument("--latent-cache", default="runs/eval-latents",
                   help="--decoder: where the sampled eval latents are kept (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from omnidit.cli.eval_settings import applied, check, settings_of

    modes = [flag for flag, on in (("--teacher", args.teacher), ("--decoder", args.decoder), ("--sweep", args.sweep),
                                   ("--i2v", args.i2v)) if on]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} are separate comparisons: give one")
    try:
        settings = settings_of(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    sets = prompt_sets(args)
    lora_specs(args.lora)  # bad --lora values fail before the model is loaded
    pipe, teacher = load_models(args)
    if args.lora:  # the adapters stay active (merged off) for every row; the teacher has none
        load_loras(pipe, args.lora)
        pipe.name += " + " + " + ".join(f"{name}:{scale:g}" for name, (_, scale) in lora_specs(args.lora).items())
    try:
        for setting in settings:
            check(pipe, setting)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        if teacher is not None:
            with applied(pipe, settings[0]):
                return compare(args, pipe, teacher, sets)
        if args.i2v:
            from omnidit.cli.eval_i2v import run_i2v

            with applied(pipe, settings[0]) as call:
                return run_i2v(args, pipe, call)
        if args.decoder:
            from omnidit.cli.eval_decoders import run_decoders

            with applied(pipe, settings[0]) as call:
                return run_decoders(args, pipe, sets, call)
        return adherence(args, pipe, sets, settings)
    except ValueError as e:
        raise UserError(str(e)) from None


def prompt_sets(args: argparse.Namespace) -> list[tuple[str, list[str], int]]:
    """(kind, prompts, frames) to score: --prompts' lines as images, else eval's seeded sets."""
    from omnidit.shapes import parse_prompt
    from omnidit.shapes.adherence import eval_sets

    if args.prompts and args.word:
        raise UserError("--prompts and --word are two prompt lists: give one")
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
        if not images:
            raise UserError(f"--prompts {args.prompts!r} has no prompts")
        return [("images", images, 1)]
    sets = eval_sets(args.n, args.n // 4 if args.videos is None else args.videos, args.seed, word=args.word)
    if not sets:
        raise UserError("--n and --videos are both 0: nothing to score")
    return sets


def load_models(args: argparse.Namespace):
    """(--model, --teacher or None) on --device."""
    import torch

    from omnidit.pipeline import Pipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    load = dict(device=args.device, text_encoder=args.text_encoder, weights=args.weights)
    try:
        pipe = Pipeline.from_pretrained(args.model, **load)
        teacher = Pipeline.from_pretrained(args.teacher, **load) if args.teacher else None
    except ValueError as e:
        raise UserError(str(e)) from None
    return pipe, teacher


def adherence(args: argparse.Namespace, pipe, sets, settings: list[dict]) -> int:
    """The model under each setting: eval's lines for one; for a sweep, a table printed row by row (eval_sweep)."""
    from omnidit.cli.eval_report import format_results, report
    from omnidit.cli.eval_settings import applied
    from omnidit.shapes.adherence import eval_pipeline

    if len(settings) > 1:
        from omnidit.cli.eval_sweep import run_sweep

        return run_sweep(args, pipe, sets, settings)
    with applied(pipe, settings[0]) as call:
        r = {"model": pipe.name, "setting": settings[0], "steps": call.get("steps") or pipe.config.steps,
             "sampler": pipe.config.sampler, "shift": pipe.config.shift}
        for kind, prompts, frames in sets:
            r[kind] = eval_pipeline(pipe, prompts, frames=frames, seed=args.seed, height=args.size,
                                    width=args.size, batch_size=args.batch_size, **call)
    return report(format_results(r), r, args.json)


def compare(args: argparse.Namespace, student, teacher, sets) -> int:
    from omnidit.cli.eval_report import format_comparison, report
    from omnidit.distill.compare import compare_models

    steps = args.steps or student.config.steps
    results = {"student": student.name, "teacher": teacher.name, "steps": steps}
    for kind, prompts, frames in sets:
        results[kind] = compare_models(student, teacher, prompts, frames=frames, steps=steps, seed=args.seed,
                                       batch_size=args.batch_size)
    return report(format_comparison(results), results, args.json)
