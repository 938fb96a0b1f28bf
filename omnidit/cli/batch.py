"""`omnidit batch PROMPTS.jsonl --out DIR`: a resumable batch generation job on Ray Data.

Exit 0 when every line has its output, 1 when some lines failed or were invalid (see the
manifest; rerunning retries the failures), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omnidit.cli.common import ConfigFlags, UserError, positive_int
from omnidit.cli.compile_flags import add_compile_args
from omnidit.cli.lora_flags import add_lora_args, lora_specs
from omnidit.cli.memory_flags import add_memory_args

HELP = "generate every line of a JSONL prompts file into a folder (Ray Data job)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from omnidit.batch import BatchConfig

    c = ConfigFlags(p, BatchConfig)
    p.add_argument("prompts", help='JSONL, one {"id"?, "prompt", "frames"?, "size"?: "WxH", "seed"?, "steps"?, '
                                   '"guidance"?, "negative_prompt"?, "cache"?, "lora"?: {"adapter": scale}} per line')
    p.add_argument("--out", required=True, help="output folder: <id>.png / <id>.mp4 and manifest.jsonl")
    c.add("--model", help="shipped model name or diffusers-format folder (default: the embedded model)")
    c.add("--concurrency", type=positive_int("--concurrency"),
          help="generator actors, each with its own copy of the model (one GPU each with --device cuda)")
    c.add("--batch-size", type=positive_int("--batch-size"),
          help="prompts of the same size/frames/steps generated together")
    c.add("--address", help="Ray cluster address (default: start a local Ray for this job)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when this machine has one)")
    add_memory_args(p, c)
    add_compile_args(p, c)
    c.add("--no-progress", field="progress", help="no progress bar")
    c.add("--moderation", metavar="FILE", help="a JSON/YAML content policy: prompts checked before planning, "
                                               "outputs before writing (blocked lines are manifest errors)")
    c.add("--audit-log", metavar="FILE", help="moderation decisions as JSON lines (default: OUT/moderation-audit.jsonl)")
    c.add("--label-producer", help="ContentProducer of the AIGC label every output carries")
    c.add("--visible-label", metavar="TEXT", help="draw TEXT in a corner of every output")
    c.add("--visible-label-frames", choices=("ends", "all"), help="video frames the visible label goes on")
    c.add("--visible-label-font", metavar="TTF", help="a TrueType font for the visible label (needed for CJK text)")
    add_lora_args(p)
    c.add("--lora-dir", metavar="DIR", help='adapters a line may name in "lora": DIR/<name>.safetensors')
    p.set_defaults(func=run, config_flags=c)


def run(args: argparse.Namespace) -> int:
    from omnidit.batch import run_batch
    from omnidit.batch.manifest import MANIFEST_NAME, JobLocked
    from omnidit.batch.runner import model_identity

    prompts = Path(args.prompts)
    if not prompts.is_file():
        raise UserError(f"prompts file {args.prompts!r} does not exist or is not a file")
    if not os.access(prompts, os.R_OK):
        raise UserError(f"prompts file {args.prompts!r} is not readable")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {args.out!r} cannot be created: {e.strerror}") from None
    manifest = out / MANIFEST_NAME
    if not os.access(out, os.R_OK | os.W_OK | os.X_OK) or (
            manifest.exists() and not os.access(manifest, os.R_OK | os.W_OK)):
        raise UserError(f"--out {args.out!r} is not readable and writable")
    device = _device(args.device, args.address, args.concurrency)
    try:
        model = model_identity(args.model)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        import ray.data  # noqa: F401  (Ray Data needs pyarrow besides ray itself)
    except ImportError as e:
        raise UserError(f"batch jobs need Ray Data: pip install 'ray[data]' ({e})") from None
    try:
        loras = {name: [str(path), scale] for name, (path, scale) in lora_specs(args.lora).items()} or None
        cfg = args.config_flags.build(args, prompts=prompts, out=out, model=model, device=device, loras=loras)
    except ValueError as e:  # e.g. a bad --moderation policy, naming its key
        raise UserError(str(e)) from None
    try:
        summary = run_batch(cfg)
    except JobLocked as e:
        raise UserError(str(e)) from None
    print(f"batch: {summary.line()}", file=sys.stderr)
    print(summary.manifest)
    return 0 if summary.complete else 1


def _device(name: str | None, address: str | None, concurrency: int) -> str:
    import torch

    if name is None:
        return "cuda" if address is None and torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda (Ray gives each actor its own GPU), got {name!r}")
    if name == "cuda" and address is None:
        n = torch.cuda.device_count()
        if n == 0:
            raise UserError("--device cuda asked for, but this machine has no CUDA GPU (or pass --address)")
        if concurrency > n:
            raise UserError(f"--concurrency {concurrency} needs one GPU per actor; this machine has {n}")
    return name
