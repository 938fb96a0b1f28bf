"""A tiny random diffusers `HunyuanVideo15Transformer3DModel`, built offline.

`make_tiny_hv15_transformer(path=None, *, task="t2v"|"i2v", seed=0, **overrides)` returns the
diffusers module (every parameter random, norm weights around 1, so each weight matters) and, with
`path`, saves it there as a diffusers transformer folder (`config.json` + safetensors).

Default sizes: 2 dual-stream blocks, heads 2 x 8, patch 1, 9 in (4 noisy + 4 condition + 1 mask) /
4 out channels, Qwen text 12, ByT5 10, SigLIP 6 wide; RoPE (2, 2, 4). Any constructor argument of
the diffusers class may be overridden (e.g. `use_meanflow=True`, `text_embed_dim=16`).
"""

from __future__ import annotations

from pathlib import Path

import torch

TASKS = ("t2v", "i2v")
TINY_HV15 = dict(
    in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_refiner_layers=2,
    mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=12, text_embed_2_dim=10, image_embed_dim=6,
    rope_axes_dim=(2, 2, 4), target_size=64, use_meanflow=False,
)


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Every parameter random, including those diffusers zero-inits; norm weights around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(1.0 + scale * noise if is_norm_weight else scale * noise)


def make_tiny_hv15_transformer(path: str | Path | None = None, *, task: str = "t2v", seed: int = 0, **overrides):
    """The diffusers module (eval mode, fp32); saved under `path` when given."""
    from diffusers import HunyuanVideo15Transformer3DModel

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    model = HunyuanVideo15Transformer3DModel(**{**TINY_HV15, "task_type": task, **overrides}).eval()
    randomize_(model, seed)
    if path is not None:
        model.save_pretrained(str(path))
    return model
