"""`omnidit` command line. Each subcommand lives in its own function; user errors exit 2 in one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input: reported in one line, exit code 2, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def positive_int(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate one image or video from a prompt")
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help="shipped model name or diffusers-format folder (default: the embedded model)")
    p.add_argument("--frames", type=positive_int("--frames"), default=1, help="1 for an image; 1 mod 4 for video (5, 9, 17, ...)")
    p.add_argument("--height", type=positive_int("--height"), default=None)
    p.add_argument("--width", type=positive_int("--width"), default=None)
    p.add_argument("--steps", type=positive_int("--steps"), default=None, help="denoising steps (default: the model's own)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output path: .png for one frame, .mp4 or .gif for video")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--attention-backend", default=None,
                   help="sdpa, flash_attn or xformers (default: $OMNIDIT_ATTENTION_BACKEND, else the model's)")
    from omnidit.cli_parallel import add_parallel_args

    add_parallel_args(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from omnidit.generation import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    out = Path(args.out or ("out.png" if args.frames == 1 else "out.mp4"))
    suffix = out.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise UserError(f"--out must end in one of {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}, got {out.name!r}")
    if args.frames > 1 and suffix in IMAGE_SUFFIXES:
        raise UserError(f"--out {out.name!r} is an image but --frames is {args.frames}; use .mp4 or .gif")
    device = _device(args.device)

    from tqdm import tqdm

    from omnidit.cli_parallel import start_parallel
    from omnidit.pipeline import Pipeline

    try:
        parallel = start_parallel(args, device)  # None unless under torchrun with parallel flags
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        try:
            pipe = Pipeline.from_pretrained(args.model, device=parallel.device if parallel else device,
                                            parallel=parallel)
            if args.attention_backend is not None:
                pipe.dit.set_attention_backend(args.attention_backend)
            req = pipe.check(frames=args.frames, height=args.height, width=args.width, steps=args.steps,
                             guidance=args.guidance, negative_prompt=args.negative_prompt)
        except ValueError as e:
            raise UserError(str(e)) from None
        writer = parallel is None or parallel.is_output_rank
        if parallel is not None and writer:
            print(f"parallel: {parallel.describe()}", file=sys.stderr)
        with tqdm(total=req.steps, desc="denoising", unit="step", file=sys.stderr, disable=not writer) as bar:
            gen = pipe.generate(args.prompt, frames=args.frames, height=args.height, width=args.width,
                                steps=args.steps, guidance=args.guidance, negative_prompt=args.negative_prompt,
                                seed=args.seed, callback=lambda i, n, x: bar.update(1))
        if writer:
            gen.save(out)
            print(out)
    finally:
        if parallel is not None:
            parallel.close()
    return 0


def _device(name: str | None):
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


def build_parser() -> argparse.ArgumentParser:
    from omnidit import __version__

    parser = _Parser(prog="omnidit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"omnidit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    from omnidit.cli_batch import add_batch
    from omnidit.cli_demo import add_demo
    from omnidit.cli_distill import add_distill
    from omnidit.cli_eval import add_eval
    from omnidit.cli_serve import add_serve
    from omnidit.cli_train import add_train
    from omnidit.cli_up import add_up

    add_up(sub)
    add_serve(sub)
    add_demo(sub)
    add_batch(sub)
    add_train(sub)
    add_eval(sub)
    add_distill(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"omnidit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
