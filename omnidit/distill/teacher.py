"""A distillation teacher: a model folder's DiT (frozen), VAE folder, text encoder and sampling defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Teacher:
    name: str
    model_dir: Path
    index: dict  # the folder's model_index.json
    dit: torch.nn.Module  # frozen, eval mode
    text_encoder: object
    config: object  # PipelineConfig: steps, shift, guidance scale and mode

    @property
    def vae_dir(self) -> Path:
        return self.model_dir / "vae"

    def text(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.text_encoder.encode(prompts, device=device)
        return e.hidden_states, e.attention_mask, e.pooled


def load_teacher(name_or_dir: str, *, device: torch.device, text_encoder: str | None = None) -> Teacher:
    """Load `name_or_dir` (a shipped model name or a folder) in fp32 on `device`.

    `text_encoder` overrides the folder's sentence encoder with a local copy (e.g. the packed
    MiniLM on a machine without the weights package)."""
    from omnidit.dit import DiT
    from omnidit.model_folder import open_model
    from omnidit.tokenizers import load_text_encoder

    folder = open_model(name_or_dir)
    dit = DiT.from_pretrained(folder.transformer_dir, dtype=torch.float32, device=device)
    dit.eval().requires_grad_(False)
    te = load_text_encoder(folder.path, device=device, sentence_path=text_encoder or None)
    config = folder.sampling(dit.config.guidance_embeds)
    return Teacher(folder.name, folder.path, folder.index, dit, te, config)
