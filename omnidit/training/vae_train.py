"""Train the embedded model's small causal video VAE (diffusers' AutoencoderKLHunyuanVideo) on the shapes world.

Images (one frame) and short clips in one run: the VAE is causal, so the first frame of a
clip is encoded exactly like an image. Loss: L1 on pixels, weighted up on object pixels
(the background is most of the frame and easy), plus a tiny KL term; optionally a PatchGAN
term (`gan_weight`) that sharpens what L1 leaves blurred (small objects' corners).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from omnidit.training.common import Budget, load_checkpoint, log_metrics, save_checkpoint
from omnidit.training.patch_gan import PatchDiscriminator, discriminator_loss, generator_loss

# 64x64x3 -> 8x8x16 per frame (4x in time). A narrow decoder (8 channels at full resolution)
# keeps a 17-frame decode around 0.15 s on a 2-core CPU; 16 latent channels keep small shapes.
# Two norm groups: with one channel per group (8 groups of 8 channels) every GroupNorm is an
# instance norm that erases a frame's absolute colour, and the decoder cannot paint backgrounds.
SHAPES_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    block_out_channels=(8, 16, 32, 64), layers_per_block=1, norm_num_groups=2,
    spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
)


@dataclass
class VAETrainConfig:
    out: str = "runs/shapes/vae"
    size: int = 64
    images_per_step: int = 12
    clips_per_step: int = 1
    clip_every: int = 1  # add the clip batch on every Nth step (video steps cost ~2x an image step)
    clip_frames: int = 9
    lr: float = 5e-4
    kl_weight: float = 1e-6
    object_weight: float = 10.0
    edge_weight: float = 0.0  # extra loss weight on object outlines (2 px), where corners and shapes are
    max_steps: int | None = None
    max_minutes: float | None = 15.0
    checkpoint_every: int = 100
    seed: int = 0
    workers: int = 0  # DataLoader processes rendering scenes ahead (0 = render in this process)
    eval_n: int = 128  # scenes in the final reconstruction check (images; videos get a quarter)
    # Decoder-only fine-tuning: the encoder (so the latent space the DiT learned) stays fixed.
    decoder_only: bool = False
    init_from: str | None = None  # a saved VAE folder to start from
    # Re-fit a VAE under a changed config (e.g. norm groups) while keeping the latent space a DiT
    # was trained on: this frozen VAE's encoder defines the latents; the new decoder learns to decode
    # them and the new encoder learns to reproduce them.
    keep_latents_of: str | None = None
    norm_groups: int | None = None  # override norm_num_groups (the re-fit's config change)
    spatial_compression: int = 8  # a new VAE's downsampling: 8 (64x64 -> 8x8) or 4 (-> 16x16)
    latent_channels: int = 16  # a new VAE's latent channels
    anchor_weight: float = 1.0
    # Deepen an `init_from` VAE to this many layers per block; the added residual blocks start as
    # identities (grow_layers), so the latent space and the decoder's output are unchanged at step 0.
    layers_per_block: int | None = None
    # Adversarial sharpening (patch_gan.py): the discriminator trains from step 0, the decoder
    # feels it from `gan_start` on (a random discriminator's gradients are noise).
    gan_weight: float = 0.0
    gan_start: int = 200
    disc_lr: float = 2e-4
    # Decoder-only: also decode a model's one-step reconstructions of the encoded scenes
    # (denoised_latents.py), so the decoder learns the latents a DiT really produces.
    denoiser: str | None = None  # a model name or folder whose DiT denoises (a few-step one is best)
    denoise_sigma: tuple[float, float] = (0.2, 0.8)
    denoise_p_clean: float = 0.25  # share of samples decoded from the encoder's own latents
    # A new word (spec.NEW_SHAPES) in a p_word share of the scenes: a decoder fine-tuned with it can
    # draw what a LoRA then teaches the DiT (`omnidit train lora`); with the encoder frozen the DiT's
    # latent space, hence the base model, is unchanged.
    word: str | None = None
    p_word: float = 0.25

    def __post_init__(self) -> None:
        from omnidit.shapes.spec import NEW_SHAPES

        if self.word is not None and self.word not in NEW_SHAPES:
            raise ValueError(f"word must be one of {list(NEW_SHAPES)}, got {self.word!r}")
        if not 0.0 <= self.p_word <= 1.0:
            raise ValueError(f"p_word must be in [0, 1], got {self.p_word}")


def make_vae(norm_groups: int | None = None, spatial_compression: int = 8, latent_channels: int = 16):
    """The shapes VAE. `spatial_compression` 4 (with fewer latent channels) keeps small objects'
    corners: a 64x64 frame becomes 16x16 latents, so a small shape spans a few latent pixels."""
    from diffusers import AutoencoderKLHunyuanVideo

    conf = {**SHAPES_VAE_CONFIG, "spatial_compression_ratio": spatial_compression, "latent_channels": latent_channels}
    if norm_groups:
        conf["norm_num_groups"] = norm_groups
    return AutoencoderKLHunyuanVideo(**conf)


def grow_layers(vae, layers_per_block: int):
    """A copy of `vae` with `layers_per_block` residual blocks per level, computing the same function.

    Each added block is appended after a level's existing ones (where channels in == out, so it has
    no shortcut conv) with its last conv zeroed: `x + conv2(...) = x`. The encoder, hence the latent
    space a DiT was trained on, is unchanged; fine-tuning gives the decoder the extra depth.
    """
    from diffusers import AutoencoderKLHunyuanVideo

    old = vae.config.layers_per_block
    if layers_per_block < old:
        raise ValueError(f"layers_per_block must be >= the VAE's {old}, got {layers_per_block}")
    conf = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    grown = AutoencoderKLHunyuanVideo(**{**conf, "layers_per_block": layers_per_block})
    missing, unexpected = grown.load_state_dict(vae.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"cannot grow this VAE: unexpected weights {unexpected[:3]}")
    added = {re.sub(r"(\.resnets\.\d+)\..*", r"\1", k) for k in missing}  # "....resnets.N", no old weights
    if any(not re.search(r"\.resnets\.\d+$", k) for k in added):
        raise ValueError(f"cannot grow this VAE: missing non-residual weights {sorted(added)[:3]}")
    for name in added:
        block = grown.get_submodule(name)
        torch.nn.init.zeros_(block.conv2.conv.weight)
        torch.nn.init.zeros_(block.conv2.conv.bias)
    return grown


def to_video_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 `[B, F, H, W, 3]` (numpy or tensor, any device) -> float `[B, 3, F, H, W]` in [-1, 1]."""
    t = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
    return t.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def pixel_weights(x: torch.Tensor, object_weight: float, edge_weight: float = 0.0) -> torch.Tensor:
    """L1 weights `[B, 1, F, H, W]` for frames x `[B, 3, F, H, W]`: 1 on the background (the frame's
    corner colour), 1 + object_weight on objects, plus edge_weight on the 2-pixel band along
    object outlines (a small square differs from a small circle only there)."""
    bg = x[:, :, :, :1, :1]
    obj = ((x - bg).abs().amax(1, keepdim=True) > 0.05).float()  # [B, 1, F, H, W]
    w = 1.0 + object_weight * obj
    if edge_weight:
        grow = F.max_pool3d(obj, (1, 3, 3), 1, (0, 1, 1))  # dilated by one pixel
        shrink = -F.max_pool3d(-obj, (1, 3, 3), 1, (0, 1, 1))  # eroded by one pixel
        w = w + edge_weight * (grow - shrink)
    return w


# ---- the modes: what the VAE starts from, what it trains, which latents the decoder sees ------------

# (frames x, prompts, this step's CPU generator) -> (latents z, posterior, anchor loss or None)
LatentFn = Callable[[torch.Tensor, list, torch.Generator], tuple[torch.Tensor, object, "torch.Tensor | None"]]


@dataclass
class VAEMode:
    """One training mode, chosen once from the config (`vae_mode`): the VAE and its trainable
    parameters, `latents(x, prompts, gen) -> (z, posterior, anchor loss or None)` for a batch, and how the
    result is saved. The step loop is the same for every mode."""

    name: str
    vae: torch.nn.Module
    params: list
    latents: LatentFn
    keep_scaling: float | None = None  # the latent space is unchanged: keep this scaling factor
    export: bool = True  # a new latent space: measure and set its scaling factor (export_vae)


def _own_latents(vae, train_encoder: bool) -> LatentFn:
    def latents(x, prompts, gen):
        with torch.set_grad_enabled(train_encoder):
            post = vae.encode(x).latent_dist
            return post.sample(), post, None

    return latents


def _reference_latents(vae, ref) -> LatentFn:
    """Decode the reference's latents; pull the new encoder onto them (the anchor loss)."""

    def latents(x, prompts, gen):
        with torch.no_grad():
            ref_post = ref.encode(x).latent_dist
            z = ref_post.sample()
        post = vae.encode(x).latent_dist
        return z, post, F.mse_loss(post.mean.float(), ref_post.mean.float())

    return latents


def _denoised_latents(vae, denoiser) -> LatentFn:
    """The DiT's one-step reconstruction of the encoder's latents (noise levels and noise from `gen`)."""

    def latents(x, prompts, gen):
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            return denoiser.denoise(post.mode(), prompts, gen), post, None

    return latents


def _decoder_params(vae) -> list:
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    return list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())


def vae_mode(cfg: VAETrainConfig, device: torch.device) -> VAEMode:
    """The mode a config asks for: `keep_latents_of` (re-fit under a changed config), `denoiser`
    (decoder on a DiT's latents), `decoder_only`, `init_from` (continue or deepen), or a new VAE."""
    from diffusers import AutoencoderKLHunyuanVideo

    if cfg.denoiser and not (cfg.decoder_only and cfg.init_from):
        raise ValueError("denoiser needs decoder_only and init_from (the VAE whose latents the model was trained on)")
    if cfg.keep_latents_of:
        ref = AutoencoderKLHunyuanVideo.from_pretrained(cfg.keep_latents_of).float().eval().requires_grad_(False)
        conf = {k: v for k, v in ref.config.items() if not k.startswith("_")}
        if cfg.norm_groups:
            conf["norm_num_groups"] = cfg.norm_groups
        vae = AutoencoderKLHunyuanVideo(**conf)
        vae.load_state_dict(ref.state_dict())  # norm grouping changes no parameter shape
        vae.train().to(device)
        ref.to(device)
        params = _decoder_params(vae) if cfg.decoder_only else list(vae.parameters())
        return VAEMode("refit", vae, params, _reference_latents(vae, ref), keep_scaling=ref.config.scaling_factor,
                       export=False)
    if cfg.init_from:
        vae = AutoencoderKLHunyuanVideo.from_pretrained(cfg.init_from).float()
        if cfg.layers_per_block:
            vae = grow_layers(vae, cfg.layers_per_block)
    else:
        vae = make_vae(cfg.norm_groups, cfg.spatial_compression, cfg.latent_channels)
    vae.train().to(device)
    if cfg.denoiser:
        from omnidit.training.denoised_latents import DenoisedLatents

        denoiser = DenoisedLatents(cfg.denoiser, scaling_factor=vae.config.scaling_factor, device=device,
                                   sigma_range=tuple(cfg.denoise_sigma), p_clean=cfg.denoise_p_clean)
        return VAEMode("denoised decoder", vae, _decoder_params(vae), _denoised_latents(vae, denoiser),
                       keep_scaling=vae.config.scaling_factor, export=False)
    if cfg.decoder_only:
        return VAEMode("decoder", vae, _decoder_params(vae), _own_latents(vae, False),
                       keep_scaling=vae.config.scaling_factor, export=False)
    return VAEMode("full", vae, list(vae.parameters()), _own_latents(vae, True))


def _loss(mode: VAEMode, x: torch.Tensor, prompts: list, gen: torch.Generator, cfg: VAETrainConfig,
          disc=None) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(loss, logs, reconstruction); `disc` adds the adversarial term."""
    z, post, anchor = mode.latents(x, prompts, gen)
    rec = mode.vae.decode(z).sample.float()  # [B, 3, F, H, W]
    w = pixel_weights(x, cfg.object_weight, cfg.edge_weight)
    l1 = (w * (rec - x).abs()).mean()
    kl = post.kl().float().mean() / x[0].numel()
    logs = {"l1": float((rec - x).abs().mean().detach()), "kl": float(kl.detach())}
    if anchor is not None:
        logs["anchor"] = float(anchor.detach())
        loss = l1 + cfg.anchor_weight * anchor
    else:
        loss = l1 + cfg.kl_weight * kl
    if disc is not None:
        g = generator_loss(disc, rec)
        logs["gan_g"] = float(g.detach())
        loss = loss + cfg.gan_weight * g
    return loss, logs, rec


def train_vae(cfg: VAETrainConfig) -> Path:
    """Train (or resume) in the mode `cfg` asks for (`vae_mode`), then save and measure the VAE."""
    from omnidit.training.shapes_stream import stream_batches

    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mode = vae_mode(cfg, device)
    vae = mode.vae
    opt = torch.optim.AdamW(mode.params, lr=cfg.lr, weight_decay=0.0)
    disc = disc_opt = None
    if cfg.gan_weight > 0:
        disc = PatchDiscriminator().to(device).train()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
    step = 0
    ck = load_checkpoint(out / "checkpoint.pt")
    if ck is not None:
        vae.load_state_dict(ck["vae"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        if disc is not None and "disc" in ck:
            disc.load_state_dict(ck["disc"])
            disc_opt.load_state_dict(ck["disc_opt"])
        print(f"resumed VAE training at step {step}")
    # A resumed run draws new scenes (the stream is seeded by the start step), not a replay.
    new_word = dict(word=cfg.word, p_word=cfg.p_word)
    images = stream_batches(cfg.images_per_step, frames=1, size=cfg.size, seed=cfg.seed, start=step,
                            workers=cfg.workers, **new_word)
    clips = stream_batches(cfg.clips_per_step, frames=cfg.clip_frames, size=cfg.size, seed=cfg.seed,
                           start=step, workers=cfg.workers, **new_word) if cfg.clips_per_step else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    budget = Budget(cfg.max_steps, cfg.max_minutes)
    bar = tqdm(desc=f"vae ({mode.name})", unit="step", initial=step)
    t0 = time.time()
    while not budget.done(step):
        # Warm up, then cosine from lr to lr / 10 over this run's budget (a resumed run decays anew).
        lr = cfg.lr * min(1.0, (step + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * budget.fraction(step)))
        for g in opt.param_groups:
            g["lr"] = lr
        adversary = disc if disc is not None and step >= cfg.gan_start else None
        if disc is not None:
            disc.requires_grad_(False)  # the decoder's step needs gradients through it, not for it
        pairs = []  # (real, reconstruction) for the discriminator's step
        gen = torch.Generator("cpu").manual_seed(cfg.seed * 1_000_003 + step)  # resumable draws
        with autocast:
            prompts, frames = next(images)
            x = to_video_tensor(frames.to(device))
            loss, logs, rec = _loss(mode, x, prompts, gen, cfg, adversary)
            pairs.append((x, rec))
            if clips is not None and step % cfg.clip_every == 0:
                prompts, frames = next(clips)
                x = to_video_tensor(frames.to(device))
                vloss, vlogs, rec = _loss(mode, x, prompts, gen, cfg, adversary)
                loss = loss + vloss
                logs["video_l1"] = vlogs["l1"]
                pairs.append((x, rec))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if disc is not None:
            disc.requires_grad_(True)
            with autocast:
                d_loss = sum(discriminator_loss(disc, x, rec) for x, rec in pairs)
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            logs["gan_d"] = float(d_loss.detach())
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{logs['l1']:.4f}", refresh=False)
        if step % cfg.checkpoint_every == 0 or budget.done(step):
            extra = {"disc": disc.state_dict(), "disc_opt": disc_opt.state_dict()} if disc is not None else {}
            save_checkpoint(out / "checkpoint.pt", vae=vae.state_dict(), opt=opt.state_dict(),
                            step=step, config=asdict(cfg), **extra)
            log_metrics(out / "metrics.jsonl", {"step": step, "loss": float(loss.detach()), **logs,
                                                 "seconds": round(time.time() - t0, 1)})
    bar.close()
    _save(mode, out / "vae", cfg, step)
    return out / "vae"


def _save(mode: VAEMode, folder: Path, cfg: VAETrainConfig, step: int) -> None:
    """Write the VAE folder, then measure what it reconstructs (PSNR, and the evaluator's ceiling)."""
    vae = mode.vae.cpu()
    if mode.export:
        export_vae(vae, folder, size=cfg.size, seed=cfg.seed)
    else:  # the latent space is unchanged: so is its scaling factor
        vae.register_to_config(scaling_factor=mode.keep_scaling)
        vae.eval().save_pretrained(folder)
    psnr = reconstruction_psnr(folder, size=cfg.size, n=cfg.eval_n)
    ceiling = {f: reconstruction_adherence(folder, frames=f, n=cfg.eval_n if f == 1 else max(1, cfg.eval_n // 4),
                                           size=cfg.size) for f in (1, 17)}
    record = {"step": step, "psnr": round(psnr, 2), "reconstruction_adherence": ceiling}
    print(f"VAE reconstruction: {psnr:.2f} dB PSNR; evaluator on reconstructions: images {ceiling[1]}, "
          f"17-frame videos {ceiling[17]}")
    if cfg.word:
        record[f"reconstruction_adherence_{cfg.word}"] = word = reconstruction_adherence(
            folder, n=cfg.eval_n, size=cfg.size, word=cfg.word)
        print(f"images holding {cfg.word!r}: {word}")
    log_metrics(folder.parent / "metrics.jsonl", record)


@torch.no_grad()
def export_vae(vae, out_dir: Path, *, size: int = 64, seed: int = 0, n: int = 256) -> Path:
    """Save in diffusers format with `scaling_factor` set so latents have unit variance."""
    from omnidit.shapes.world import random_batch

    vae = vae.eval()
    _, img, _ = random_batch(np.random.default_rng(seed + 1), n, frames=1, size=size)
    z = torch.cat([vae.encode(to_video_tensor(img[i:i + 32])).latent_dist.mode() for i in range(0, n, 32)])
    scale = 1.0 / float(z.std())
    vae.register_to_config(scaling_factor=round(scale, 6))
    vae.save_pretrained(out_dir)
    print(f"saved VAE to {out_dir} (scaling_factor {scale:.4f}, latent mean {float(z.mean()):.3f})")
    return out_dir


@torch.no_grad()
def reconstruction_psnr(vae_dir: Path, *, frames: int = 1, n: int = 64, size: int = 64, seed: int = 123) -> float:
    """PSNR (dB) of encode->decode on fresh scenes: how much the VAE keeps."""
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.shapes.world import random_batch

    vae = AutoencoderKLHunyuanVideo.from_pretrained(vae_dir).eval()
    _, vid, _ = random_batch(np.random.default_rng(seed), n, frames=frames, size=size)
    x = to_video_tensor(vid)
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 16]).latent_dist.mode()).sample for i in range(0, n, 16)])
    mse = float(((rec.clamp(-1, 1) - x) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruction_adherence(vae_dir: Path, *, frames: int = 1, n: int = 128, size: int = 64, seed: int = 321,
                             device: str | torch.device = "cpu", word: str | None = None) -> dict:
    """Evaluator scores of encode->decode on fresh scenes (each holding `word` when given): the
    ceiling any DiT on this VAE can reach."""
    from omnidit.shapes.evaluate import evaluate_many
    from omnidit.shapes.world import random_batch
    from omnidit.tokenizers import VideoVAE, frames_to_uint8

    vae = VideoVAE.from_pretrained(vae_dir, device=device)
    _, vid, specs = random_batch(np.random.default_rng(seed), n, frames=frames, size=size, word=word)
    x = to_video_tensor(vid)
    rec = torch.cat([frames_to_uint8(vae.decode(vae.encode(x[i:i + 32]))).cpu() for i in range(0, n, 32)])
    return evaluate_many(zip(rec.numpy(), specs))
