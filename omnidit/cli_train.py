"""`omnidit train vae|cache|dit|export`: the embedded model's training stages, each resumable."""

from __future__ import annotations

import json
from pathlib import Path


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train the embedded shapes model (stages: vae, cache, dit, export)")
    st = p.add_subparsers(dest="stage", required=True, parser_class=type(p))

    v = st.add_parser("vae", help="train the small causal video VAE on the shapes world")
    v.add_argument("--out", default="runs/shapes/vae")
    v.add_argument("--minutes", type=float, default=15.0)
    v.add_argument("--steps", type=int, default=None)
    v.add_argument("--lr", type=float, default=5e-4)
    v.add_argument("--object-weight", type=float, default=10.0, help="loss weight of object pixels vs background")
    v.add_argument("--edge-weight", type=float, default=0.0,
                   help="extra loss weight on the 2-pixel outline of objects, where shapes differ (0: off)")
    v.add_argument("--clip-every", type=int, default=1, help="train on a video clip every Nth step")
    v.add_argument("--images-per-step", type=int, default=12)
    v.add_argument("--clips-per-step", type=int, default=1)
    v.add_argument("--workers", type=int, default=0, help="processes rendering scenes ahead (0: in this process)")
    v.add_argument("--init-from", default=None, help="start from this saved VAE folder")
    v.add_argument("--keep-latents-of", default=None,
                   help="re-fit under a changed config while keeping this VAE's latent space (its encoder, frozen, "
                        "defines the latents a DiT was trained on)")
    v.add_argument("--norm-groups", type=int, default=None, help="override the config's norm_num_groups")
    v.add_argument("--layers-per-block", type=int, default=None,
                   help="with --init-from: deepen the VAE to this many residual blocks per level; the added blocks "
                        "start as identities, so the latent space is unchanged (pair with --decoder-only)")
    v.add_argument("--decoder-only", action="store_true",
                   help="fine-tune the decoder only (keeps the latent space the DiT was trained on)")
    v.add_argument("--gan-weight", type=float, default=0.0,
                   help="weight of a PatchGAN term that sharpens the decoder (0: L1 + KL only)")
    v.add_argument("--gan-start", type=int, default=200, help="step from which the decoder feels the GAN term")
    v.add_argument("--denoiser", default=None,
                   help="with --decoder-only: also decode this model's one-step reconstructions of the encoded "
                        "scenes (a shipped name or folder; a few-step model such as shapes-turbo), so the decoder "
                        "learns the latents its DiT really produces")
    v.add_argument("--denoise-sigma", type=float, nargs=2, default=(0.2, 0.8), metavar=("LOW", "HIGH"),
                   help="noise levels the --denoiser starts from, uniform in [LOW, HIGH] inside (0, 1)")
    v.add_argument("--denoise-p-clean", type=float, default=0.25,
                   help="with --denoiser: share of samples decoded from the encoder's own latents, in [0, 1)")
    v.add_argument("--spatial-compression", type=int, choices=(4, 8), default=8,
                   help="a new VAE's spatial downsampling (64x64 -> 8x8 or 16x16 latents)")
    v.add_argument("--latent-channels", type=int, default=16, help="a new VAE's latent channels")
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_train_vae)

    c = st.add_parser("cache", help="pre-encode latents + text embeddings for DiT training")
    c.add_argument("--vae", default="runs/shapes/vae/vae")
    c.add_argument("--out", default="runs/shapes/cache")
    c.add_argument("--images", type=int, default=16384)
    c.add_argument("--videos", type=int, default=2048)
    c.add_argument("--video-frames", type=int, default=17)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_train_cache)

    d = st.add_parser("dit", help="flow-matching training of the DiT on the cache")
    d.add_argument("--out", default="runs/shapes/dit")
    d.add_argument("--vae", default="runs/shapes/vae/vae")
    d.add_argument("--cache", default="runs/shapes/cache")
    d.add_argument("--minutes", type=float, default=60.0)
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--lr", type=float, default=3e-4)
    d.add_argument("--image-batch", type=int, default=32)
    d.add_argument("--video-batch", type=int, default=8)
    d.add_argument("--video-every", type=int, default=3, help="one video batch after every N image batches")
    d.add_argument("--data", choices=("cache", "online"), default="cache",
                   help="cache: the chunks `train cache` wrote; online: render + encode every batch (GPU machines)")
    d.add_argument("--workers", type=int, default=4, help="--data online: rendering processes per stream")
    d.add_argument("--text-encoder", default=None, help="a sentence-encoder folder (default: the packaged MiniLM)")
    d.add_argument("--video-shift", type=float, default=1.0,
                   help="shift video batches' noise levels towards pure noise (where motion is decided); 1 = none")
    d.add_argument("--init-from", default=None,
                   help="fine-tune: start from this model (a name such as shapes, or a model folder)")
    d.add_argument("--patch-size", type=int, choices=(1, 2), default=None,
                   help="a new DiT's spatial patch (default: the preset's, 1; 2 suits a --spatial-compression 4 VAE)")
    d.add_argument("--eval-every", type=int, default=1000)
    d.add_argument("--eval-n", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_train_dit)

    e = st.add_parser("export", help="write a run's EMA weights + VAE as a model folder")
    e.add_argument("--checkpoint", default="runs/shapes/dit/checkpoint.pt")
    e.add_argument("--vae", default="runs/shapes/vae/vae")
    e.add_argument("--out", default="omnidit/models/shapes")
    e.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="the EMA weights (default) or the raw ones (better after a short run, while EMA lags)")
    e.set_defaults(func=cmd_train_export)


def cmd_train_vae(args) -> int:
    from omnidit.cli import UserError
    from omnidit.training.vae_train import VAETrainConfig, train_vae

    if args.layers_per_block is not None:
        if not args.init_from:
            raise UserError("--layers-per-block deepens an existing VAE: give --init-from VAE_DIR")
        if not Path(args.init_from, "config.json").is_file():
            raise UserError(f"--init-from {args.init_from!r} is not a saved VAE folder (no config.json)")
        old = json.loads(Path(args.init_from, "config.json").read_text())["layers_per_block"]
        if args.layers_per_block < old:
            raise UserError(f"--layers-per-block must be >= the VAE's own {old}, got {args.layers_per_block}")
    if args.denoiser is not None:
        from omnidit.pipeline import resolve_model

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

    train_vae(VAETrainConfig(out=args.out, max_minutes=args.minutes, max_steps=args.steps, seed=args.seed,
                             lr=args.lr, clip_every=args.clip_every, init_from=args.init_from,
                             decoder_only=args.decoder_only, object_weight=args.object_weight,
                             edge_weight=args.edge_weight,
                             images_per_step=args.images_per_step, clips_per_step=args.clips_per_step,
                             workers=args.workers, keep_latents_of=args.keep_latents_of,
                             norm_groups=args.norm_groups, gan_weight=args.gan_weight, gan_start=args.gan_start,
                             spatial_compression=args.spatial_compression, latent_channels=args.latent_channels,
                             layers_per_block=args.layers_per_block, denoiser=args.denoiser,
                             denoise_sigma=tuple(args.denoise_sigma), denoise_p_clean=args.denoise_p_clean))
    return 0


def cmd_train_cache(args) -> int:
    from omnidit.cli import UserError
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


def cmd_train_dit(args) -> int:
    from omnidit.cli import UserError
    from omnidit.training.dit_train import DiTTrainConfig, train_dit

    cache = Path(args.cache)
    if not Path(args.vae, "config.json").is_file():
        raise UserError(f"--vae {args.vae!r} is not a trained VAE folder (run `omnidit train vae` first)")
    if args.data == "cache" and not (cache / "images").is_dir():
        raise UserError(f"--cache {args.cache!r} has no images/ (run `omnidit train cache` first)")
    if not args.video_shift > 0:
        raise UserError(f"--video-shift must be > 0, got {args.video_shift}")
    if args.init_from:
        from omnidit.pipeline import resolve_model

        try:
            resolve_model(args.init_from)
        except ValueError as e:
            raise UserError(f"--init-from: {e}") from None
    train_dit(DiTTrainConfig(
        out=args.out, vae=args.vae, image_cache=str(cache / "images"), video_cache=str(cache / "videos"), max_minutes=args.minutes, max_steps=args.steps,
        lr=args.lr, image_batch=args.image_batch, video_batch=args.video_batch, eval_every=args.eval_every,
        eval_n=args.eval_n, seed=args.seed, data=args.data, workers=args.workers, text_encoder=args.text_encoder,
        video_every=args.video_every, init_from=args.init_from, video_shift=args.video_shift,
        patch_size=args.patch_size,
    ))
    return 0


def cmd_train_export(args) -> int:
    from omnidit.cli import UserError
    from omnidit.training.dit_train import SHAPES_SAMPLING
    from omnidit.training.export import export_model

    if not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint!r} does not exist")
    print(export_model(Path(args.checkpoint), Path(args.vae), Path(args.out), sampling=SHAPES_SAMPLING,
                       use_ema=args.weights == "ema"))
    return 0
