"""`omnidit eval --decoder VAE_DIR ...`: the model's eval scores with other decoders, sampled once.

The model's eval latents (eval's prompts, seeds and batches) are sampled once and kept under
--latent-cache, keyed by everything they depend on; each decoder (the model's own VAE first,
then each --decoder of the same latent space) then decodes and scores them in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from omnidit.cli.common import UserError
from omnidit.cli.eval_report import report, table_header, table_row

WIDTH = 40  # the decoder column: a folder's last characters


def load_decoders(args: argparse.Namespace, pipe, model_dir: Path) -> dict[str, object]:
    """{folder: VideoVAE} for the model's own VAE and each --decoder; a UserError when a folder is
    not a VAE or its latents are not the model's (checked before anything is sampled)."""
    from omnidit.tokenizers import VideoVAE

    out = {str(model_dir / "vae"): pipe.vae}  # the decoder `omnidit eval` scores with
    want = pipe.vae.latent_shape(1, args.size, args.size)
    for folder in args.decoder:
        if not Path(folder, "config.json").is_file():
            raise UserError(f"--decoder {folder!r} is not a VAE folder (no config.json)")
        vae = VideoVAE.from_pretrained(folder, device=args.device)
        if vae.latent_shape(1, args.size, args.size) != want:
            raise UserError(f"--decoder {folder!r} takes latents {vae.latent_shape(1, args.size, args.size)}, "
                            f"the model makes {want}: not the model's latent space")
        out[folder] = vae
    return out


def cache_path(args: argparse.Namespace, pipe, model_dir: Path, kind: str, prompts: list[str], frames: int,
               call: dict) -> Path:
    """Where one set's latents are kept: named by everything they depend on, so a change resamples."""
    index = model_dir / "model_index.json"
    key = json.dumps({"model": str(model_dir.resolve()), "written": index.stat().st_mtime_ns, "prompts": prompts,
                      "frames": frames, "seed": args.seed, "size": args.size, "batch": args.batch_size,
                      "device": args.device, "sampler": pipe.config.sampler, "shift": pipe.config.shift,
                      **call, **_adapters(args)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(args.latent_cache) / f"{model_dir.name}-{kind}-{len(prompts)}-{digest}.pt"


def _adapters(args: argparse.Namespace) -> dict:
    """The --lora adapters the latents were sampled with: each file's content hash and scale (nothing
    without --lora, so the keys of adapter-free latents stay what they were)."""
    from omnidit.cli.lora_flags import lora_specs
    from omnidit.pipeline_lora import fingerprint

    specs = lora_specs(getattr(args, "lora", None) or [])
    return {"loras": fingerprint(specs)} if specs else {}


def eval_latents(args: argparse.Namespace, pipe, model_dir: Path, sets, call: dict) -> dict:
    """{kind: (prompts, latents)}, from the cache or sampled now (and kept)."""
    from tqdm import tqdm

    from omnidit.shapes.decoder_eval import sample_latents

    out = {}
    for kind, prompts, frames in sets:
        path = cache_path(args, pipe, model_dir, kind, prompts, frames, call)
        if path.is_file():
            latents = torch.load(path)
        else:
            print(f"sampling {len(prompts)} {kind} with {pipe.name} (once; kept in {path})", file=sys.stderr)
            with tqdm(total=len(prompts), desc="sampled", unit="sample", file=sys.stderr) as bar:
                latents = sample_latents(pipe, prompts, frames=frames, seed=args.seed, size=args.size,
                                         batch_size=args.batch_size, progress=bar.update, **call)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(latents, path)
        out[kind] = (prompts, latents)
    return out


def run_decoders(args: argparse.Namespace, pipe, sets, call: dict) -> int:
    from omnidit.model_folder import resolve_model
    from omnidit.shapes.decoder_eval import decode_frames, score_frames, small_shape_reads

    model_dir = resolve_model(args.model)
    decoders = load_decoders(args, pipe, model_dir)
    latents = eval_latents(args, pipe, model_dir, sets, call)
    lines = [f"{pipe.name}'s eval latents (seed {args.seed}) decoded by:", table_header("decoder", WIDTH)]
    results: dict[str, dict] = {}
    for folder, vae in decoders.items():
        for kind, (prompts, z) in latents.items():
            frames = decode_frames(vae, z)
            scores = results.setdefault(folder, {})[kind] = score_frames(frames, prompts)
            lines.append(table_row(kind, folder, WIDTH, scores))
            if kind == "images":
                reads = small_shape_reads(frames, prompts)
                lines.append(f"{'':8s} small squares read as {dict(reads['square'])}, small triangles as "
                             f"{dict(reads['triangle'])}")
    return report("\n".join(lines), {"model": pipe.name, "seed": args.seed, "decoders": results}, args.json)
