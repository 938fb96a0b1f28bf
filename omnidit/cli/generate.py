"""`omnidit generate PROMPT`: one image or video to a file, optionally split across torchrun processes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omnidit.cli.common import UserError, positive_int
from omnidit.cli.compile_flags import add_compile_args
from omnidit.cli.image_flags import add_image_arg, check_image, read_image
from omnidit.cli.lora_flags import add_lora_args, load_loras, lora_specs
from omnidit.cli.auto_parallel import add_auto_parallel_arg, apply_plan
from omnidit.cli.memory_flags import add_memory_args
from omnidit.cli.parallel_flags import add_parallel_args, start_parallel
from omnidit.cli.safety_flags import add_safety_args, check_visible_label, moderator

if TYPE_CHECKING:
    import torch

HELP = "generate one image or video from a prompt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help="shipped model name or diffusers-format folder (default: the embedded model)")
    p.add_argument("--frames", type=positive_int("--frames"), default=1, help="1 for an image; 1 mod 4 for video (5, 9, 17, ...)")
    p.add_argument("--height", type=positive_int("--height"), default=None)
    p.add_argument("--width", type=positive_int("--width"), default=None)
    p.add_argument("--steps", type=positive_int("--steps"), default=None, help="denoising steps (default: the model's own)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, metavar="SPEC",
                   help='step caching: fbcache, teacache or magcache, optionally ":THRESHOLD"; none: off '
                        "(default: the model's own; teacache/magcache need `omnidit calibrate-cache` once)")
    p.add_argument("--out", default=None, help="output path: .png for one frame, .mp4 or .gif for video")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--attention-backend", default=None,
                   help="sdpa, flash_attn or xformers (default: $OMNIDIT_ATTENTION_BACKEND, else the model's)")
    add_image_arg(p)
    add_lora_args(p)
    add_memory_args(p)
    add_auto_parallel_arg(p)
    add_compile_args(p)
    add_parallel_args(p)
    add_safety_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from omnidit.generation import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    out = Path(args.out or ("out.png" if args.frames == 1 else "out.mp4"))
    suffix = out.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise UserError(f"--out must end in one of {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}, got {out.name!r}")
    if args.frames > 1 and suffix in IMAGE_SUFFIXES:
        raise UserError(f"--out {out.name!r} is an image but --frames is {args.frames}; use .mp4 or .gif")
    check_visible_label(args)
    lora_specs(args.lora)  # bad --lora values fail before the model is loaded
    start = read_image(args.image)  # an unreadable --image too
    mod = moderator(args, out.parent / "moderation-audit.jsonl")
    if mod is not None:  # before anything is loaded or generated
        from omnidit.safety import ContentBlocked

        try:
            mod.check_prompt({"prompt": args.prompt, "negative_prompt": args.negative_prompt}, request_id=out.name)
        except ContentBlocked as e:
            raise UserError(str(e)) from None
    device = torch_device(args.device)

    from tqdm import tqdm

    from omnidit.pipeline import Pipeline

    try:
        plan_line = apply_plan(args, device)  # --parallel auto: the planner sets the degrees, weights, offload
        parallel = start_parallel(args, device)  # None unless under torchrun with parallel flags
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        try:
            pipe = Pipeline.from_pretrained(args.model, device=parallel.device if parallel else device,
                                            parallel=parallel, weights=args.weights, offload=args.offload)
            if args.attention_backend is not None:
                pipe.dit.set_attention_backend(args.attention_backend)
            loras = load_loras(pipe, args.lora)
            if args.compile:
                pipe.compile(args.compile)
            image = check_image(pipe, start, args.frames)
            req = pipe.check(frames=args.frames, height=args.height, width=args.width, steps=args.steps,
                             guidance=args.guidance, negative_prompt=args.negative_prompt, cache=args.cache,
                             image=image)
        except ValueError as e:
            raise UserError(str(e)) from None
        writer = parallel is None or parallel.is_output_rank
        if plan_line and writer:
            print(plan_line, file=sys.stderr)
        if parallel is not None and writer:
            print(f"parallel: {parallel.describe()}", file=sys.stderr)
        with tqdm(total=req.steps, desc="denoising", unit="step", file=sys.stderr, disable=not writer) as bar:
            gen = pipe.generate(args.prompt, frames=args.frames, height=args.height, width=args.width,
                                steps=args.steps, guidance=args.guidance, negative_prompt=args.negative_prompt,
                                seed=args.seed, cache=args.cache, loras=loras, image=image,
                                callback=lambda i, n, x: bar.update(1))
        if writer:
            finish(gen, args, mod, out)
            gen.save(out)
            print(out)
    finally:
        if parallel is not None:
            parallel.close()
    return 0


def finish(gen, args: argparse.Namespace, mod, out: Path) -> None:
    """The output hook (a blocked output is a UserError and no file), the visible label, the AIGC label."""
    from omnidit.safety import ContentBlocked, aigc_label, draw_visible_label

    if mod is not None:
        try:
            mod.check_output(gen.frames, prompt=args.prompt, request_id=out.name)
        except ContentBlocked as e:
            raise UserError(str(e)) from None
    if args.visible_label:
        gen.frames = draw_visible_label(gen.frames, args.visible_label, which=args.visible_label_frames,
                                        font=args.visible_label_font)
    gen.info["aigc"] = aigc_label(producer=args.label_producer, model=gen.info.get("model"))


def torch_device(name: str | None) -> torch.device | None:
    """--device as a torch.device (None: let the pipeline choose); a UserError if unusable here."""
    import torch

    if name is None:
        return None
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return dev
