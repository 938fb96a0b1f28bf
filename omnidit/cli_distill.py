"""`omnidit distill --teacher shapes --method guidance|consistency|dmd --steps 4 --out DIR`."""

from __future__ import annotations

from pathlib import Path


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help="step-distil a model: guidance (one forward per step) or consistency (few steps)")
    p.add_argument("--teacher", default="shapes", help="shipped model name or model folder to distil")
    p.add_argument("--method", choices=("guidance", "consistency", "dmd"), default="consistency",
                   help="guidance: one forward per step; consistency: few steps along the teacher's ODE; "
                        "dmd: few steps matching the teacher's distribution (DMD2-style, no GAN term)")
    p.add_argument("--steps", type=int, default=4, help="consistency, dmd: the student's default sampling steps")
    p.add_argument("--fake-updates", type=int, default=5,
                   help="dmd: fake-score updates per student update (two time-scale rule)")
    p.add_argument("--phases", type=int, default=1,
                   help="consistency: 1 = multistep x0 prediction (serves any step count); K = K phases, sampled in K steps")
    p.add_argument("--out", default=None, help="model folder to write (default: runs/distill/<teacher>-<method>/model)")
    p.add_argument("--run", default=None, help="checkpoint folder, resumed when run again (default: beside --out)")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--data", choices=("cache", "online"), default="cache",
                   help="cache: chunks from `omnidit train cache --vae <teacher>/vae`; online: render each batch")
    p.add_argument("--cache", default="runs/shapes/cache", help="--data cache: folder with images/ (and videos/)")
    p.add_argument("--image-batch", type=int, default=32)
    p.add_argument("--video-batch", type=int, default=8)
    p.add_argument("--video-every", type=int, default=3, help="one video batch after every N image batches (0: none)")
    p.add_argument("--workers", type=int, default=4, help="--data online: rendering processes per stream")
    p.add_argument("--init-student", default=None,
                   help="start the student from this exported student folder instead of the teacher")
    p.add_argument("--text-encoder", default=None, help="a local sentence-encoder folder to use instead of the teacher's")
    p.add_argument("--eval-every", type=int, default=500, help="adherence check of the student every N steps (0: off)")
    p.add_argument("--eval-n", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    from omnidit.cli import UserError
    from omnidit.distill.loop import DistillConfig, train_distill

    for name in ("steps", "phases", "image_batch", "video_batch", "eval_n", "fake_updates"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.minutes <= 0 and args.max_steps is None:
        raise UserError(f"--minutes must be > 0, got {args.minutes}")
    label = Path(str(args.teacher)).name or "teacher"
    out = Path(args.out) if args.out else Path("runs/distill") / f"{label}-{args.method}" / "model"
    run = Path(args.run) if args.run else out.parent / f"{out.name}.run"
    cache = Path(args.cache)
    try:
        cfg = DistillConfig(
            teacher=args.teacher, method=args.method, out=str(out), run=str(run), steps=args.steps,
            phases=args.phases, lr=args.lr, data=args.data, image_cache=str(cache / "images"),
            video_cache=str(cache / "videos"), image_batch=args.image_batch, video_batch=args.video_batch,
            video_every=args.video_every, workers=args.workers, text_encoder=args.text_encoder,
            init_student=args.init_student, fake_updates=args.fake_updates,
            max_steps=args.max_steps, max_minutes=args.minutes if args.minutes > 0 else None,
            eval_every=args.eval_every, eval_n=args.eval_n, seed=args.seed,
        )  # validates the arguments first
        if args.data == "cache" and not (cache / "images").is_dir():
            raise UserError(f"--cache {args.cache!r} has no images/ (run `omnidit train cache --vae <teacher>/vae` "
                            "first, or use --data online)")
        folder = train_distill(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {folder}")
    return 0
