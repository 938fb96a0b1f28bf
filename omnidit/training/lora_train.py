"""Teach a shipped model a new word with a LoRA (`omnidit train lora`).

The base DiT stays frozen; a fresh adapter (dit/lora.py) on its attention and MLP Linears learns
the flow-matching loss on scenes rendered on the fly: a `p_word` share of each batch holds the
new word (spec.NEW_SHAPES), the rest are the base grammar's scenes, so the old prompts keep what
the model drew before. The loop is the DiT's (accelerate, text dropout for CFG, a time budget,
a progress bar); checkpoints hold the adapter, optimizer and generator and resume exactly (batch
k is drawn from the seed and k alone). The result is a diffusers/PEFT safetensors file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from omnidit.sampling.flow import flow_loss
from omnidit.training.common import (
    Budget,
    load_checkpoint,
    log_metrics,
    optimizer_step,
    reference_attention,
    save_checkpoint,
    smooth_loss,
)

# Linears the adapter targets (suffixes of module names): every attention projection and MLP of the
# dual- and single-stream blocks and the text refiner; the embedders and modulations stay frozen.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                   "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
                   "single_transformer_blocks.0.proj_out", "single_transformer_blocks.1.proj_out",
                   "single_transformer_blocks.2.proj_out", "single_transformer_blocks.3.proj_out")
ADAPTER = "new_word"  # the adapter's name inside the DiT while training


@dataclass
class LoRATrainConfig:
    out: str = "runs/lora"
    model: str = "shapes"  # shipped name or model folder whose DiT gets the adapter
    word: str = "cross"  # one of spec.NEW_SHAPES
    rank: int = 16
    alpha: float | None = None  # None: alpha = rank (scale 1)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    p_word: float = 0.5  # share of each batch whose scene holds the new word
    image_batch: int = 32
    size: int = 64  # image side, pixels (the model's own default for the shapes models)
    lr: float = 1e-3
    warmup: int = 50
    text_dropout: float = 0.1
    shift: float = 1.0  # shift of the training noise levels towards 1 (where a shape is decided); 1 = none
    max_steps: int | None = None
    max_minutes: float | None = 50.0
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        from omnidit.shapes.spec import NEW_SHAPES

        if self.word not in NEW_SHAPES:
            raise ValueError(f"word must be one of {list(NEW_SHAPES)}, got {self.word!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.p_word <= 1.0:
            raise ValueError(f"p_word must be in [0, 1], got {self.p_word}")
        if self.image_batch < 1:
            raise ValueError(f"image_batch must be >= 1, got {self.image_batch}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.targets = tuple(self.targets)


def scene_batch(cfg: LoRATrainConfig, step: int, size: int = 64) -> tuple[list[str], np.ndarray]:
    """Batch `step`'s (paraphrased prompts, uint8 [B, 1, size, size, 3]): round(p_word * B) scenes
    with the new word, the rest from the base grammar; a function of (seed, step) alone."""
    from omnidit.shapes.world import mixed_batch

    rng = np.random.default_rng([cfg.seed, step])
    return mixed_batch(rng, cfg.image_batch, frames=1, size=size, word=cfg.word, p_word=cfg.p_word)


@reference_attention()
def train_lora(cfg: LoRATrainConfig) -> Path:
    """Train, checkpoint, and write `out/<model>-<word>.safetensors`; returns that path."""
    from accelerate import Accelerator

    from omnidit.dit import lora
    from omnidit.pipeline import Pipeline
    from omnidit.training.vae_train import to_video_tensor

    out = Path(cfg.out)
    acc = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    torch.manual_seed(cfg.seed)
    pipe = Pipeline.from_pretrained(cfg.model, device=acc.device, dtype=torch.float32)
    dit = pipe.dit.float().requires_grad_(False)
    params = lora.add_trainable_lora(dit, ADAPTER, cfg.rank, cfg.targets, alpha=cfg.alpha, seed=cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    ck = load_checkpoint(out / "checkpoint.pt")
    if ck is not None:
        with torch.no_grad():
            for p, saved in zip(params, ck["adapter"]):
                p.copy_(saved)
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        step = ck["step"]
        acc.print(f"resumed LoRA training at step {step}")
    dit.train()
    model, opt = acc.prepare(dit, opt)
    e = pipe.text_encoder.encode([""], device="cpu")
    null = (e.hidden_states[0], e.attention_mask[0], e.pooled[0])
    acc.print(f"LoRA rank {cfg.rank} on {len(lora.state(dit).modules[ADAPTER])} Linears of {pipe.name}: "
              f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable params; word {cfg.word!r}, "
              f"{cfg.p_word:.0%} of each batch")

    budget = Budget(cfg.max_steps, cfg.max_minutes)
    bar = tqdm(desc=f"lora {cfg.word}", unit="step", initial=step, disable=not acc.is_local_main_process)
    t0, run_loss = time.time(), None
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        prompts, frames = scene_batch(cfg, step, cfg.size)
        with torch.no_grad():
            x0 = pipe.vae.encode(to_video_tensor(frames).to(acc.device)).float()  # [B, C, 1, h, w]
            emb = pipe.text_encoder.encode(prompts, device=acc.device)
        # Text states cut to the batch's longest prompt: padding is masked, so only the cost changes.
        n_text = max(int(emb.attention_mask.sum(1).max()), int(null[1].sum()))
        text, mask = emb.hidden_states[:, :n_text].float(), emb.attention_mask[:, :n_text]  # [B, L, D], [B, L]
        with acc.autocast():
            loss = flow_loss(model, x0, text, mask, emb.pooled.float(), (null[0][:n_text], null[1][:n_text], null[2]),
                             gen, cfg.text_dropout, shift=cfg.shift)
        optimizer_step(acc, model, opt, loss, None, step)
        step += 1
        run_loss = smooth_loss(run_loss, loss)
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss:.4f}", refresh=False)
        last = budget.done(step)
        if acc.is_main_process and (step % cfg.checkpoint_every == 0 or last):
            save_checkpoint(out / "checkpoint.pt", adapter=[p.detach().cpu().clone() for p in params],
                            opt=opt.state_dict(), gen=gen.get_state(), step=step, config=asdict(cfg))
            log_metrics(out / "metrics.jsonl", {"step": step, "loss": run_loss, "last_loss": float(loss.detach()),
                                                "seconds": round(time.time() - t0, 1)})
    bar.close()
    path = lora.save_lora(acc.unwrap_model(model), ADAPTER, out / f"{Path(cfg.model).name}-{cfg.word}.safetensors")
    lora.unload(dit, ADAPTER)
    return path
