"""`omnidit train vae|cache|dit|export|lora`: the embedded model's training stages, each resumable.

Stages hand folders to each other (vae -> cache -> dit -> export), so a stage's input defaults
are the previous stage's output, read from the training configs. `lora` teaches a shipped model
a new word with an adapter (omnidit/training/lora_train.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnidit.cli.common import ConfigFlags, Parser, UserError

HELP = "train the embedded shapes model (stages: vae, cache, dit, export) or a LoRA for it (lora)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from omnidit.training.dit_train import DiTTrainConfig

    st = p.add_subparsers(dest="stage", required=True, parser_class=Parser)
    _add_vae(st.add_parser("vae", help="train the small causal video VAE on the shapes world"))
    cache = str(Path(DiTTrainConfig.image_cache).parent)

    c = st.add_parser("cache", help="pre-encode latents + text embeddings for DiT training")
    c.add_argument("--vae", default=DiTTrainConfig.vae, help="the VAE folder (default: %(default)s)")
    c.add_argument("--out", default=cache, help="writes images/ and videos/ here (default: %(default)s)")
    c.add_argument("--images", type=int, default=16384)
    c.add_argument("--videos", type=int, default=2048)
    c.add_argument("--video-frames", type=int, default=DiTTrainConfig.video_frames)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=run_cache)

    _add_dit(st.add_parser("dit", help="flow-matching training of the DiT on the cache"), cache)

    e = st.add_parser("export", help="write a run's EMA weights + VAE as a model folder")
    e.add_argument("--checkpoint", default=str(Path(DiTTrainConfig.out) / "checkpoint.pt"),
                   help="default: %(default)s")
    e.add_argument("--vae", default=DiTTrainConfig.vae, help="default: %(default)s")
    e.add_argument("--out", default="omnidit/models/shapes", help="default: %(default)s")
    e.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="the EMA weights (default) or the raw ones (better after a short run, while EMA lags)")
    e.set_defaults(func=run_export)

    _add_lora(st.add_parser("lora", help="teach a shipped model a new word (a shape it never saw) with a LoRA"))


def _add_vae(v: argparse.ArgumentParser) -> None:
    from omnidit.shapes.spec import NEW_SHAPES
    from omnidit.training.vae_train import VAETrainConfig

    c = ConfigFlags(v, VAETrainConfig)
    c.add("--out", help="run folder: checkpoint, metrics and the trained vae/")
    c.add("--minutes", field="max_minutes")
    c.add("--steps", field="max_steps")
    c.add("--lr")
    c.add("--object-weight", help="loss weight of object pixels vs background")
    c.add("--edge-weight", help="extra loss weight on the 2-pixel outline of objects, where shapes differ (0: off)")
    c.add("--clip-every", help="train on a video clip every Nth step")
    c.add("--images-per-step")
    c.add("--clips-per-step")
    c.add("--workers", help="processes rendering scenes ahead (0: in this process)")
    c.add("--init-from", help="start from this saved VAE folder")
    c.add("--keep-latents-of",
          help="re-fit under a changed config while keeping this VAE's latent space (its encoder, frozen, "
               "defines the latents a DiT was trained on)")
    c.add("--norm-groups", help="override the config's norm_num_groups")
    c.add("--layers-per-block",
          help="with --init-from: deepen the VAE to this many residual blocks per level; the added blocks "
               "start as identities, so the latent space is unchanged (pair with --decoder-only)")
    c.add("--decoder-only", help="fine-tune the decoder only (keeps the latent space the DiT was trained on)")
    c.add("--gan-weight", help="weight of a PatchGAN term that sharpens the decoder (0: L1 + KL only)")
    c.add("--gan-start", help="step from which the decoder feels the GAN term")
    c.add("--denoiser",
          help="with --decoder-only: also decode this model's one-step reconstructions of the encoded "
               "scenes (a shipped name or folder; a few-step model such as shapes-turbo), so the decoder "
               "learns the latents its DiT really produces")
    c.add("--denoise-sigma", metavar=("LOW", "HIGH"),
          help="noise levels the --denoiser starts from, uniform in [LOW, HIGH] inside (0, 1)")
    c.add("--denoise-p-clean",
          help="with --denoiser: share of samples decoded from the encoder's own latents, in [0, 1)")
    c.add("--spatial-compression", choices=(4, 8),
          help="a new VAE's spatial downsampling (64x64 -> 8x8 or 16x16 latents)")
    c.add("--latent-channels", help="a new VAE's latent channels")
    c.add("--word", choices=NEW_SHAPES,
          help="also train on scenes holding this new word (with --decoder-only: a decoder that can draw "
               "what a LoRA teaches, base latent space unchanged)")
    c.add("--p-word", help="with --word: share of each batch's scenes that hold it")
    c.add("--seed")
    v.set_defaults(func=run_vae, config_flags=c)


def _add_dit(d: argparse.ArgumentParser, cache: str) -> None:
    from omnidit.training.dit_train import DiTTrainConfig

    c = ConfigFlags(d, DiTTrainConfig)
    c.add("--out")
    c.add("--vae")
    d.add_argument("--cache", default=cache, help="the folder `train cache` wrote (default: %(default)s)")
    c.add("--minutes", field="max_minutes")
    c.add("--steps", field="max_steps")
    c.add("--lr")
    c.add("--image-batch")
    c.add("--video-batch")
    c.add("--video-every", help="one video batch after every N image batches")
    c.add("--data", choices=("cache", "online"),
          help="cache: the chunks `train cache` wrote; online: render + encode every batch (GPU machines)")
    c.add("--workers", help="--data online: rendering processes per stream")
    c.add("--text-encoder", help="a sentence-encoder folder (default: the packaged MiniLM)")
    c.add("--video-shift",
          help="shift video batches' noise levels towards pure noise (where motion is decided); 1 = none")
    c.add("--init-from", help="fine-tune: start from this model (a name such as shapes, or a model folder)")
    c.add("--patch-size", choices=(1, 2),
          help="a new DiT's spatial patch (default: the preset's, 1; 2 suits a --spatial-compression 4 VAE)")
    c.add("--eval-every")
    c.add("--eval-n")
    c.add("--seed")
    d.set_defaults(func=run_dit, config_flags=c)


def _add_lora(lo: argparse.ArgumentParser) -> None:
    from omnidit.shapes.spec import NEW_SHAPES
    from omnidit.training.lora_train import LoRATrainConfig

    c = ConfigFlags(lo, LoRATrainConfig)
    c.add("--model", help="shipped model name or model folder whose DiT the adapter is trained on")
    c.add("--word", choices=NEW_SHAPES, help="the new word: a shape the base model was never trained on")
    c.add("--out", help="run folder: checkpoint.pt (resumed when present), metrics.jsonl, the adapter")
    c.add("--rank")
    c.add("--alpha", help="LoRA alpha (default: the rank, i.e. scale 1)")
    c.add("--steps", field="max_steps")
    c.add("--minutes", field="max_minutes")
    c.add("--lr")
    c.add("--image-batch")
    c.add("--p-word", help="share of each batch whose scene holds the new word (the rest: the base grammar)")
    c.add("--shift", help="shift the training noise levels towards pure noise, where a shape is decided; 1 = none")
    c.add("--checkpoint-every")
    c.add("--seed")
    lo.set_defaults(func=run_lora, config_flags=c)


def run_lora(args: argparse.Namespace) -> int:
    from omnidit.model_folder import resolve_model
    from omnidit.training.lora_train import train_lora

    try:
        resolve_model(args.model)
        cfg = args.config_flags.build(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(train_lora(cfg))
    return 0


def run_vae(args: argparse.Namespace) -> int:
    from omnidit.training.vae_train import train_vae

    if args.layers_per_block is not None:
        if not args.init_from:
            raise UserError("--layers-per-block deepens an existing VAE: give --init-from VAE_DIR")
        if not Path(args.init_from, "config.json").is_file():
            raise UserError(f"--init-from {args.init_from!r} is not a saved VAE folder (no config.json)")
        old = json.loads(Path(args.init_from, "config.json").read_text())["layers_per_block"]
        if args.layers_per_block < old:
            raise UserError(f"--layers-per-block must be >= the VAE's own {old}, got {args.layers_per_block}")
    if args.denoiser is not None:
        from omnidit.model_folder import resolve_model

        if not (args.decoder_only and args.init_from):
            raise UserError("--denoiser fine-tunes a decoder on its model's latents: give --decoder-only and "
                            "--init-from (that model's VAE folder)")
        try:
            resolve_model(args.denoiser)
        except ValueError as e:
            raise UserError(f"--denoiser: {e}") from None
        lo, hi = args.denoise_sigma
        if not 0.0 < lo <= hi < 1.0:
            raise UserError(f"--denoise-sigma must satisfy 0 < LOW <= HIGH < 1, got {lo} {hi}")
        if not 0.0 <= args.denoise_p_clean < 1.0:
            raise UserError(f"--denoise-p-clean must be in [0, 1), got {args.denoise_p_clean}")
    try:
        cfg = args.config_flags.build(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    train_vae(cfg)
    return 0


def run_cache(args: argparse.Namespace) -> int:
    from omnidit.tokenizers import load_text_encoder
    from omnidit.training.latent_cache import build_cache

    if not Path(args.vae, "config.json").is_file():
        raise UserError(f"--vae {args.vae!r} is not a trained VAE folder (run `omnidit train vae` first)")
    te = load_text_encoder({"kind": "sentence"})
    out = Path(args.out)
    if args.images:
        build_cache(Path(args.vae), out / "images", n=args.images, frames=1, seed=args.seed, text_encoder=te)
    if args.videos:
        build_cache(Path(args.vae), out / "videos", n=args.videos, frames=args.video_frames, seed=args.seed,
                    text_encoder=te)
    return 0


def run_dit(args: argparse.Namespace) -> int:
    from omnidit.training.dit_train import train_dit

    cache = Path(args.cache)
    if not Path(args.vae, "config.json").is_file():
        raise UserError(f"--vae {args.vae!r} is not a trained VAE folder (run `omnidit train vae` first)")
    if args.data == "cache" and not (cache / "images").is_dir():
        raise UserError(f"--cache {args.cache!r} has no images/ (run `omnidit train cache` first)")
    if not args.video_shift > 0:
        raise UserError(f"--video-shift must be > 0, got {args.video_shift}")
    if args.init_from:
        from omnidit.model_folder import resolve_model

        try:
            resolve_model(args.init_from)
        except ValueError as e:
            raise UserError(f"--init-from: {e}") from None
    train_dit(args.config_flags.build(args, image_cache=str(cache / "images"), video_cache=str(cache / "videos")))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from omnidit.training.dit_train import SHAPES_SAMPLING
    from omnidit.training.export import export_model

    if not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint!r} does not exist")
    print(export_model(Path(args.checkpoint), Path(args.vae), Path(args.out), sampling=SHAPES_SAMPLING,
                       use_ema=args.weights == "ema"))
    return 0
