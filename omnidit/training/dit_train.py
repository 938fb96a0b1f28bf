"""Flow-matching training of the DiT on cached latents (`omnidit train dit`).

One run mixes images and videos (an image is a one-frame video): image and video batches
alternate, since their token counts differ. accelerate runs the same loop on one CPU now
and on several GPUs (bf16) later. Checkpoints resume exactly: model, EMA, optimizer, step, RNG.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from omnidit.sampling.flow import flow_loss
from omnidit.training.common import (
    EMA,
    Budget,
    load_checkpoint,
    load_weights_from,
    log_metrics,
    optimizer_step,
    reference_attention,
    save_checkpoint,
    smooth_loss,
)


@dataclass
class DiTTrainConfig:
    out: str = "runs/shapes/dit"
    vae: str = "runs/shapes/vae/vae"
    image_cache: str = "runs/shapes/cache/images"
    video_cache: str | None = "runs/shapes/cache/videos"
    preset: str = "shapes"
    init_from: str | None = None  # fine-tune: start from this model folder's transformer (its config wins)
    data: str = "cache"  # "cache": pre-encoded chunks; "online": render + encode every batch (GPU boxes)
    text_encoder: str | None = None  # a sentence-encoder folder (default: the packaged MiniLM)
    video_frames: int = 17  # online data only
    workers: int = 4  # online data only: rendering processes per stream
    image_batch: int = 32
    video_batch: int = 8
    video_every: int = 3  # one video batch after every N image batches
    video_shift: float = 1.0  # shift of video batches' noise levels towards 1, where motion is decided
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    text_dropout: float = 0.1  # classifier-free guidance: train the unconditional branch too
    max_steps: int | None = None
    max_minutes: float | None = 60.0
    checkpoint_every: int = 250
    eval_every: int = 1000
    eval_n: int = 32
    refresh_every: int = 200  # pick up cache chunks written by a build running beside training
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # DiTConfig fields to change from the preset
    patch_size: int | None = None  # spatial patch of a new DiT (2 on a 4x VAE's 16x16 latents: 64 tokens)


@reference_attention()
def train_dit(cfg: DiTTrainConfig) -> Path:
    from accelerate import Accelerator

    from omnidit.dit import DiT, preset
    from omnidit.tokenizers import load_text_encoder

    out = Path(cfg.out)
    acc = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        from omnidit.dit.checkpoint import read_config
        from omnidit.model_folder import resolve_model

        dit_cfg = read_config(resolve_model(cfg.init_from) / "transformer")
    else:
        dit_cfg = preset(cfg.preset)
        # A new DiT reads and writes the VAE's latents, whatever their channel count.
        dit_cfg.in_channels = dit_cfg.out_channels = vae_latent_channels(Path(cfg.vae))
        if cfg.patch_size:
            dit_cfg.patch_size = cfg.patch_size
    for k, v in cfg.overrides.items():
        setattr(dit_cfg, k, v)
    model = DiT(dit_cfg)
    model.initialize_weights()
    if cfg.init_from:
        load_weights_from(model, cfg.init_from, "init_from")
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    ck = load_checkpoint(out / "checkpoint.pt")
    if ck is not None:
        model.load_state_dict(ck["model"])
        ema.model.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        step = ck["step"]
        acc.print(f"resumed DiT training at step {step}")
    model, opt = acc.prepare(model, opt)
    ema.model.to(acc.device)

    spec = {"kind": "sentence", **({"path": str(Path(cfg.text_encoder).resolve())} if cfg.text_encoder else {})}
    text_encoder = load_text_encoder(spec, device=acc.device)
    images, videos = open_data(cfg, acc.device, text_encoder, start=step)
    e = text_encoder.encode([""], device="cpu")
    null = (e.hidden_states[0], e.attention_mask[0], e.pooled[0])
    data = ("rendered on the fly" if cfg.data == "online" else
            f"{len(images)} images, {len(videos) if videos else 0} videos cached")
    acc.print(f"DiT {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params on {acc.device}; data: {data}")

    budget = Budget(cfg.max_steps, cfg.max_minutes)
    bar = tqdm(desc="dit", unit="step", initial=step, disable=not acc.is_local_main_process)
    t0, run_loss = time.time(), None
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        if step % cfg.refresh_every == 0:
            added = images.refresh() + (videos.refresh() if videos is not None else 0)
            if added:
                acc.print(f"step {step}: {added} new cached samples ({len(images)} images, "
                          f"{len(videos) if videos else 0} videos)")
        is_video = (videos is not None and len(videos) > 0 and cfg.video_every > 0
                    and step % (cfg.video_every + 1) == cfg.video_every)
        data = videos.batch(gen, cfg.video_batch) if is_video else images.batch(gen, cfg.image_batch)
        x0, text, mask, pooled = (t.to(acc.device) for t in data)
        with acc.autocast():
            loss = flow_loss(model, x0, text, mask, pooled, null, gen, cfg.text_dropout,
                             shift=cfg.video_shift if is_video else 1.0)
        optimizer_step(acc, model, opt, loss, ema, step)
        step += 1
        run_loss = smooth_loss(run_loss, loss)
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss:.4f}", refresh=False)
        last = budget.done(step)
        if acc.is_main_process and (step % cfg.checkpoint_every == 0 or last):
            save_checkpoint(out / "checkpoint.pt", model=acc.unwrap_model(model).state_dict(),
                            ema=ema.model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                            step=step, config=asdict(cfg), dit_config=dit_cfg.to_dict())
            log_metrics(out / "metrics.jsonl", {"step": step, "loss": run_loss, "seconds": round(time.time() - t0, 1)})
        if acc.is_main_process and cfg.eval_every and (step % cfg.eval_every == 0 or last):
            scores = quick_eval(ema.model, Path(cfg.vae), text_encoder, n=cfg.eval_n, seed=cfg.seed + 7)
            log_metrics(out / "metrics.jsonl", {"step": step, "eval": scores})
            acc.print(f"step {step} eval: {scores}")
            if videos is not None and acc.device.type == "cuda":  # 17-frame samples: too slow on a CPU
                vscores = quick_eval(ema.model, Path(cfg.vae), text_encoder, n=max(1, cfg.eval_n // 2),
                                     seed=cfg.seed + 7, video=True)
                log_metrics(out / "metrics.jsonl", {"step": step, "video_eval": vscores})
                acc.print(f"step {step} video eval: {vscores}")
    bar.close()
    return out


def vae_latent_channels(vae_dir: Path) -> int:
    import json

    return int(json.loads((vae_dir / "config.json").read_text())["latent_channels"])


def open_data(cfg: DiTTrainConfig, device: torch.device, text_encoder, *, start: int):
    """(images, videos) sources with `batch(gen, b)` and `refresh()`; videos may be None."""
    from omnidit.training.latent_cache import LatentCache
    from omnidit.training.shapes_stream import OnlineLatents

    if cfg.data == "online":
        def stream(batch, frames, salt):
            return OnlineLatents(Path(cfg.vae), text_encoder, batch=batch, frames=frames, device=device,
                                 seed=cfg.seed + salt, start=start, workers=cfg.workers)
        videos = stream(cfg.video_batch, cfg.video_frames, 1) if cfg.video_batch and cfg.video_every else None
        return stream(cfg.image_batch, 1, 0), videos
    if cfg.data != "cache":
        raise ValueError(f"data must be 'cache' or 'online', got {cfg.data!r}")
    images = LatentCache(Path(cfg.image_cache))
    if not len(images):
        raise ValueError(f"no cached images in {cfg.image_cache}; run `omnidit train cache` first")
    videos = LatentCache(Path(cfg.video_cache)) if cfg.video_cache and Path(cfg.video_cache).is_dir() else None
    return images, videos


@torch.no_grad()
def quick_eval(dit, vae_dir: Path, text_encoder, *, n: int, seed: int, steps: int | None = 20,
               sampling: dict | None = None, video: bool = False) -> dict:
    """Adherence of a training model on `n` image (or 17-frame video) prompts: a training-time health check.
    `sampling` (a PipelineConfig dict) defaults to the shapes model's; `steps` None = its own."""
    from omnidit.pipeline import Pipeline
    from omnidit.pipeline_config import PipelineConfig
    from omnidit.shapes.adherence import eval_pipeline, eval_prompts
    from omnidit.tokenizers import VideoVAE

    cfg = PipelineConfig.from_dict(sampling or SHAPES_SAMPLING)
    device = next(dit.parameters()).device
    pipe = Pipeline(dit.eval(), VideoVAE.from_pretrained(vae_dir, device=device), text_encoder, cfg, name="training")
    return eval_pipeline(pipe, eval_prompts(n, seed=seed, video=video), frames=17 if video else 1, steps=steps,
                         seed=seed, batch_size=32 if device.type == "cuda" else 8)["scores"]


# The embedded model's sampling defaults, written into its model_index.json at export.
SHAPES_SAMPLING = dict(
    steps=30, shift=1.0, guidance=4.0, guidance_mode="cfg", negative_prompt="", sampler="euler",
    height=64, width=64, frames=1, fps=8, max_height=128, max_width=128, max_frames=33, size_multiple=16,
)
