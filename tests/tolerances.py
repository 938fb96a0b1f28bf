"""The tolerances parity tests use against reference libraries (diffusers, transformers).

Two independently versioned libraries may order float operations differently from one release
to the next, so a comparison across libraries asserts float rounding, never bit-equality:
- tensors in float32: relative L2 error <= FP32_REL (1e-5);
- tensors in bfloat16: relative L2 error <= BF16_REL (1e-2; bf16 keeps 8 significant bits);
- decoded uint8 frames: every pixel within 1/255.
Bit-exactness stays where it is ours to keep: our own code on both sides, or the very same
kernels of one library run twice in one process (same seed, same machine).
"""

from __future__ import annotations

import numpy as np
import torch

FP32_REL = 1e-5
BF16_REL = 1e-2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64 (0 when both are zero)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    denom = b.norm()
    return float((a - b).norm() / denom) if denom > 0 else float((a - b).norm())


def assert_rel_close(got: torch.Tensor, want: torch.Tensor, rel: float | None = None) -> None:
    """Same shape and dtype-appropriate relative error (FP32_REL, or BF16_REL for bfloat16)."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if rel is None:
        rel = BF16_REL if torch.bfloat16 in (got.dtype, want.dtype) else FP32_REL
    err = rel_err(got, want)
    assert err <= rel, f"relative error {err:.3g} > {rel:g}"


def assert_frames_close(got, want, levels: int = 1) -> None:
    """uint8 frames of the same shape, every pixel within `levels`/255 of the reference."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype == np.uint8, (got.dtype, want.dtype)
    diff = int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max(initial=0))
    assert diff <= levels, f"frames differ by {diff}/255 (allowed {levels}/255)"
