"""Attention backends (a small registry) and the default single-device joint attention.

Every joint (video + text) attention of the DiT goes through `DiT.joint_attention(q, k, v, layout)`
with q, k, v `[B, S, H, D]`, S = n_img + L (video tokens first). Padded text never needs a dense
`[S, S]` mask: diffusers masks padded text only as *keys* (every query row sees the first
n_img + len_b tokens), so each sample's attention is plain unmasked attention over its valid keys.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

ENV_VAR = "OMNIDIT_ATTENTION_BACKEND"

AttnFn = Callable[..., torch.Tensor]  # (q, k, v, key_mask=None) -> out


@dataclass(frozen=True, eq=False)
class JointLayout:
    """Where the tokens of a joint sequence are: `[video (n_img) | text (max_text, padded per sample)]`.

    `text_lengths` (LongTensor[B], on CPU) counts each sample's real text tokens; text is
    right-padded, so sample b's valid keys are the first `n_img + text_lengths[b]` tokens.
    """

    n_img: int
    text_lengths: torch.Tensor
    max_text: int
    _lengths: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lengths", tuple(int(n) for n in self.text_lengths.tolist()))
        if any(n < 0 or n > self.max_text for n in self._lengths):
            raise ValueError(f"JointLayout.text_lengths must lie in [0, {self.max_text}], got {self._lengths}")

    @property
    def uniform(self) -> bool:
        """True when no sample has padding, i.e. attention needs no mask at all."""
        return all(n == self.max_text for n in self._lengths)

    def valid_lengths(self) -> list[int]:
        """Per sample, how many leading tokens are valid keys (n_img + its text length)."""
        return [self.n_img + n for n in self._lengths]


# The hook's signature: (q, k, v `[B, S, H, D]`, layout) -> `[B, S, H, D]`.
JointAttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, JointLayout], torch.Tensor]


@dataclass(frozen=True)
class AttentionBackend:
    """One attention kernel: `fn(q, k, v, key_mask=None)` on `[B, S, H, D]` tensors -> `[B, S, H, D]`.

    `key_mask` (`[B, S]` bool, True = attend) is only passed to backends with `supports_mask`.
    """

    name: str
    fn: AttnFn
    device_types: frozenset[str]
    dtypes: frozenset[torch.dtype]
    supports_mask: bool  # fn takes a key-padding mask
    requires: str | None = None  # module that must be importable

    def available(self) -> bool:
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return False
        return "cpu" in self.device_types or torch.cuda.is_available()

    def check(self, q: torch.Tensor) -> None:
        if q.device.type not in self.device_types or q.dtype not in self.dtypes:
            raise ValueError(
                f"attention backend {self.name!r} supports devices {sorted(self.device_types)} and dtypes "
                f"{sorted(str(d) for d in self.dtypes)}; got {q.dtype} on {q.device.type} "
                f"(set DiTConfig.attention_backend or ${ENV_VAR} to 'sdpa')"
            )


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, S]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, D]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, S, D]
    return out.transpose(1, 2)  # [B, S, H, D]


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)  # [B, S, H, D] in and out


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from xformers.ops import memory_efficient_attention

    return memory_efficient_attention(q, k, v)  # [B, S, H, D] in and out


_HALF = frozenset({torch.float16, torch.bfloat16})
BACKENDS: dict[str, AttentionBackend] = {
    "sdpa": AttentionBackend(
        "sdpa", _sdpa, frozenset({"cpu", "cuda", "mps", "xpu"}), _HALF | {torch.float32},
        supports_mask=True,
    ),
    "flash_attn": AttentionBackend(
        "flash_attn", _flash_attn, frozenset({"cuda"}), _HALF,
        supports_mask=False, requires="flash_attn",
    ),
    "xformers": AttentionBackend(
        "xformers", _xformers, frozenset({"cuda"}), _HALF | {torch.float32},
        supports_mask=False, requires="xformers",
    ),
}  # fmt: skip


def check_backend_name(name: str, *, field: str = "attention_backend") -> None:
    if name not in BACKENDS:
        raise ValueError(f"{field}={name!r} is not an attention backend; allowed: {sorted(BACKENDS)}")


def get_backend(name: str | None = None, *, config_value: str = "sdpa") -> AttentionBackend:
    """Resolve a backend: explicit `name`, else ${OMNIDIT_ATTENTION_BACKEND}, else the config's value."""
    source = "attention_backend"
    if name is None and os.environ.get(ENV_VAR):
        name, source = os.environ[ENV_VAR], f"${ENV_VAR}"
    name = config_value if name is None else name
    check_backend_name(name, field=source)
    backend = BACKENDS[name]
    if not backend.available():
        need = f"the {backend.requires!r} package and " if backend.requires else ""
        raise ValueError(
            f"{source}={name!r} is not available here: it needs {need}a device in {sorted(backend.device_types)}; "
            "use 'sdpa'"
        )
    return backend


def joint_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout, backend: AttentionBackend
) -> torch.Tensor:
    """Single-device joint attention; q, k, v `[B, S, H, D]` -> `[B, S, H, D]`, diffusers' padding semantics.

    Without padding it is one unmasked call. With per-sample text lengths, inference on accelerators
    runs one unmasked call per sample over that sample's valid keys (all of its query rows kept):
    exact, mask-free, so flash kernels stay usable. On CPU a `[B, 1, 1, S]` key mask measured ~5-10%
    faster than that loop, and in training (large batches, gradients) one masked call beats B small
    ones, so both use the mask. Never a dense `[S, S]` mask.
    """
    backend.check(q)
    if layout.uniform:
        return backend.fn(q, k, v)  # [B, S, H, D]
    if backend.supports_mask and (q.device.type == "cpu" or torch.is_grad_enabled()):
        valid = torch.tensor(layout.valid_lengths(), device=q.device)  # [B]
        key_mask = torch.arange(q.shape[1], device=q.device)[None] < valid[:, None]  # [B, S]
        return backend.fn(q, k, v, key_mask)  # [B, S, H, D]
    out = [
        backend.fn(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n])  # [1, S, H, D]
        for b, n in enumerate(layout.valid_lengths())
    ]
    return torch.cat(out, dim=0)  # [B, S, H, D]


def masked_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA over `[B, L, H, D]` with an optional boolean `[B, 1, L, L]` mask (the small text-only refiner)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, D]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, L, D]
    return out.transpose(1, 2)  # [B, L, H, D]
