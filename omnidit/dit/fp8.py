"""FP8 weight storage for the DiT's blocks: float8 e4m3 weights with one scale per output channel.

What is stored in FP8: every `nn.Linear` inside the dual-stream and single-stream blocks (attention
projections, MLPs and the adaLN modulation linears, which hold a quarter of HunyuanVideo's 13B
parameters: leaving them out would keep the DiT at ~0.64x a bf16 load). What stays in the compute
dtype: biases, norms, the patch and timestep/text/guidance embedders, the token refiner and the
output layer (small, and the first and last layers are where quantisation error costs most).

Compute: the weight is upcast on use (`w.to(dtype) * scale`) and multiplied in the activation
dtype (bf16 on GPU, fp32 on CPU), so it runs everywhere; no FP8 matmul kernel is used yet.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")
WEIGHTS = ("fp32", "bf16", "fp8")  # the storage choices `from_pretrained(weights=...)` takes


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`w [out, in]` -> (float8 e4m3 `[out, in]`, fp32 scale `[out]`) with w ~= q * scale[:, None]."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / FP8_MAX  # [out]
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


class FP8Linear(nn.Module):
    """A Linear whose weight is float8 with per-output-channel scales; state-dict keys `weight`
    (float8), `weight_scale` (fp32) and `bias` (compute dtype)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype: torch.dtype | None = None,
                 device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def like(cls, linear: nn.Linear) -> FP8Linear:
        """An empty FP8Linear of `linear`'s shape on its device (meta when building for a load)."""
        return cls(linear.in_features, linear.out_features, linear.bias is not None,
                   dtype=linear.weight.dtype, device=linear.weight.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FP8Linear:
        m = cls.like(linear)
        q, s = quantize(linear.weight.detach())
        m.weight, m.weight_scale = q, s
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return m

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def fp8_targets(model: nn.Module) -> Iterator[str]:
    """Names of the Linears stored in FP8 (those inside the blocks)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name.startswith(BLOCK_PREFIXES):
            yield name


def swap_to_fp8(model: nn.Module, names: list[str]) -> None:
    """Replace each named Linear by an empty FP8Linear of its shape (before a state-dict load)."""
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, FP8Linear.like(getattr(owner, leaf)))


def quantize_state(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """In place: `<name>.weight` -> float8 weight + `<name>.weight_scale`, one tensor at a time."""
    for name in names:
        key = f"{name}.weight"
        q, s = quantize(state[key])
        state[key], state[f"{name}.weight_scale"] = q, s.to(q.device)
    return state


def quantize_model(model: nn.Module) -> nn.Module:
    """Quantize an already-loaded model's block Linears in place (one layer at a time)."""
    for name in list(fp8_targets(model)):
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, FP8Linear.from_linear(getattr(owner, leaf)))
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (works on the meta device, for a model never allocated)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
