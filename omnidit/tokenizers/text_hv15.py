"""HunyuanVideo-1.5's text encoders: prompts -> TextEmbeddings with a second (glyph) token stream.

What diffusers' HunyuanVideo15Pipeline.encode_prompt computes:
- the Qwen2.5-VL text model's hidden state two layers below the top for the chat-templated prompt
  (a system message describing what to detail, then the prompt as the user turn), padded to
  108 + 1000 tokens, the first 108 (system turn + user header) cropped off: `hidden_states` and
  `attention_mask`, [B, 1000, D];
- ByT5 (a T5 encoder over UTF-8 bytes) over the quoted text of the prompt (`glyph_text`, the words
  to be drawn in the video), 256 bytes: `hidden_states_2` and `attention_mask_2`; a prompt without
  quotes gets zeros and an all-zero mask;
- no pooled vector: `pooled` is [B, 0].

Everything loads from local folders only (local_files_only=True).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from omnidit.tokenizers.text import (
    TextEmbeddings,
    TextEncoder,
    _dtype_kwargs,
    _load_tokenizer,
    _require_encoder_dirs,
)

# The system turn of HunyuanVideo-1.5's chat template (with the published runs of spaces).
HV15_SYSTEM_MESSAGE = (" " * 9).join([
    "You are a helpful assistant. Describe the video by detailing the following aspects:",
    "1. The main content and theme of the video.",
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.",
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.",
    "4. background environment, light, style and atmosphere.",
    "5. camera angles, movements, and transitions used in the video.",
])
HV15_CROP_START = 108  # tokens of the system turn and the user header in Qwen2.5's tokenizer
HV15_MAX_LENGTH = 1000  # prompt tokens kept after the crop
HV15_GLYPH_MAX_LENGTH = 256  # ByT5 bytes of the glyph text
HV15_SKIP_LAYERS = 2  # hidden state taken from layer -(skip + 1)

_QUOTED = re.compile(r'"(.*?)"|“(.*?)”')  # straight or curly double quotes, shortest match


def glyph_text(prompt: str) -> str | None:
    """The text a prompt asks to be drawn: each distinct quoted span, in order, as `Text "x". `;
    None when the prompt quotes nothing."""
    spans = list(dict.fromkeys(a or b for a, b in _QUOTED.findall(prompt)))
    return "".join(f'Text "{s}". ' for s in spans) if spans else None


class HunyuanVideo15TextEncoder(TextEncoder):
    """Qwen2.5-VL text model (per-token states) + ByT5 (glyph tokens), as diffusers' HunyuanVideo15Pipeline."""

    def __init__(self, text_encoder: torch.nn.Module, tokenizer: Any, glyph_encoder: torch.nn.Module,
                 glyph_tokenizer: Any, *, system_message: str = HV15_SYSTEM_MESSAGE,
                 crop_start: int = HV15_CROP_START, max_length: int = HV15_MAX_LENGTH,
                 glyph_max_length: int = HV15_GLYPH_MAX_LENGTH, hidden_state_skip_layer: int = HV15_SKIP_LAYERS):
        layers = text_encoder.config.num_hidden_layers
        if not 0 <= hidden_state_skip_layer < layers:
            raise ValueError(f"hidden_state_skip_layer must be in [0, {layers - 1}], got {hidden_state_skip_layer}")
        for name, v in (("crop_start", crop_start), ("max_length", max_length), ("glyph_max_length", glyph_max_length)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "crop_start" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'crop_start' else 1}, got {v!r}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the Qwen tokenizer has no chat template (HunyuanVideo-1.5 encodes a chat turn)")
        self.text_encoder, self.tokenizer = text_encoder.eval(), tokenizer
        self.glyph_encoder, self.glyph_tokenizer = glyph_encoder.eval(), glyph_tokenizer
        self.system_message = system_message
        self.crop_start, self.max_length, self.glyph_max_length = crop_start, max_length, glyph_max_length
        self.hidden_state_skip_layer = hidden_state_skip_layer

    @classmethod
    def from_pipeline_dir(cls, path: str | Path, dtype: torch.dtype | None = None,
                          device: torch.device | str | None = None, **kwargs: Any) -> HunyuanVideo15TextEncoder:
        """Load text_encoder/ (Qwen2_5_VLTextModel), tokenizer/, text_encoder_2/ (T5EncoderModel), tokenizer_2/."""
        from transformers import Qwen2_5_VLTextModel, T5EncoderModel

        path = Path(path)
        _require_encoder_dirs(path, "HunyuanVideo-1.5")
        dkw = _dtype_kwargs(dtype)
        qwen = Qwen2_5_VLTextModel.from_pretrained(path / "text_encoder", local_files_only=True, **dkw)
        byt5 = T5EncoderModel.from_pretrained(path / "text_encoder_2", local_files_only=True, **dkw)
        enc = cls(qwen, _load_tokenizer(path, "tokenizer"), byt5, _load_tokenizer(path, "tokenizer_2"), **kwargs)
        return enc.to(device=device) if device is not None else enc

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.glyph_encoder]

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        hidden, mask = self._encode_qwen(prompts)
        hidden_2, mask_2 = self._encode_glyphs(prompts)
        pooled = hidden.new_zeros(len(prompts), 0)  # [B, 0]: the family has no pooled vector
        return TextEmbeddings(hidden, mask.long(), pooled, hidden_2.to(hidden.device), mask_2.to(hidden.device))

    def _encode_qwen(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # An empty user turn is sent as one space, as the reference does.
        chats = [[{"role": "system", "content": self.system_message}, {"role": "user", "content": p or " "}]
                 for p in prompts]
        tok = self.tokenizer.apply_chat_template(
            chats, add_generation_prompt=True, tokenize=True, return_dict=True, padding="max_length",
            max_length=self.crop_start + self.max_length, truncation=True, return_tensors="pt",
        )
        dev = self.text_encoder.device
        ids, mask = tok["input_ids"].to(dev), tok["attention_mask"].to(dev)  # [B, crop + L]
        out = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-(self.hidden_state_skip_layer + 1)]  # [B, crop + L, D]
        return hidden[:, self.crop_start:], mask[:, self.crop_start:]  # [B, L, D], [B, L]

    def _encode_glyphs(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        dev, d = self.glyph_encoder.device, self.glyph_encoder.config.d_model
        n = self.glyph_max_length
        hidden = torch.zeros(len(prompts), n, d, device=dev, dtype=self.glyph_encoder.dtype)  # [B, L2, D2]
        mask = torch.zeros(len(prompts), n, device=dev, dtype=torch.long)  # [B, L2]
        texts = [glyph_text(p) for p in prompts]
        rows = [i for i, t in enumerate(texts) if t is not None]
        if rows:
            tok = self.glyph_tokenizer([texts[i] for i in rows], padding="max_length", max_length=n, truncation=True,
                                       add_special_tokens=True, return_tensors="pt")
            ids, m = tok["input_ids"].to(dev), tok["attention_mask"].to(dev)  # [R, L2]
            hidden[rows] = self.glyph_encoder(input_ids=ids, attention_mask=m.float())[0].to(hidden.dtype)
            mask[rows] = m.long()
        return hidden, mask
