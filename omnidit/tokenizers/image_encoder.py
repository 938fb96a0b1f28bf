"""The image encoder of image-to-video models: an RGB image -> SigLIP's per-patch states.

HunyuanVideo-1.5 I2V conditions its DiT on the last hidden state of a SigLIP vision tower
(`image_encoder/`, SiglipVisionModel) over the image as its processor prepares it
(`feature_extractor/`: resized to the tower's size, scaled to [-1, 1]), as diffusers'
HunyuanVideo15ImageToVideoPipeline does. Loads from local folders only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from omnidit.tokenizers.text import _dtype_kwargs


class SiglipImageEncoder:
    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model, self.processor = model.eval(), processor

    @classmethod
    def from_pipeline_dir(cls, path: str | Path, dtype: torch.dtype | None = None,
                          device: torch.device | str | None = None) -> SiglipImageEncoder:
        """Load image_encoder/ (SiglipVisionModel) and feature_extractor/ (the processor class model_index.json
        names, as diffusers would, else AutoImageProcessor)."""
        import transformers

        path = Path(path)
        missing = [d for d in ("image_encoder", "feature_extractor") if not (path / d).is_dir()]
        if missing:
            raise ValueError(f"path {str(path)!r} has no image encoder: missing {missing}")
        model = transformers.SiglipVisionModel.from_pretrained(path / "image_encoder", local_files_only=True,
                                                               **_dtype_kwargs(dtype))
        entry = json.loads((path / "model_index.json").read_text()).get("feature_extractor")
        cls_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else "AutoImageProcessor"
        proc_cls = getattr(transformers, cls_name, transformers.AutoImageProcessor)
        processor = proc_cls.from_pretrained(path / "feature_extractor", local_files_only=True)
        enc = cls(model, processor)
        return enc.to(device) if device is not None else enc

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SiglipImageEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def encode(self, image) -> torch.Tensor:
        """An RGB PIL image -> [1, N, D] last hidden states (N patches of the tower)."""
        inputs = self.processor(images=image, do_resize=True, do_convert_rgb=True, return_tensors="pt")
        pixels = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)  # [1, 3, S, S]
        return self.model(pixel_values=pixels).last_hidden_state  # [1, N, D]
