"""Flow-matching noise schedules (sigma = 1 is pure noise, sigma = 0 is data).

The numbers equal diffusers' FlowMatchEulerDiscreteScheduler as HunyuanVideoPipeline drives it:
`set_timesteps(sigmas=np.linspace(1, 0, steps + 1)[:-1])` casts the float64 linspace to
float32, applies the shift in float32, and appends a terminal 0; timesteps are the float32
sigmas times num_train_timesteps (1000). We follow the same dtypes so that the values are
bit-identical, not merely close.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def _check_shift(shift: float) -> float:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    return float(shift)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift s' = shift*s / (1 + (shift-1)*s), computed in the dtype of `sigmas`.

    shift > 1 spends more steps at high noise (what large videos need); shift = 1 is identity.
    """
    shift = _check_shift(shift)
    sigmas = torch.as_tensor(sigmas)
    if not sigmas.is_floating_point():
        raise ValueError(f"sigmas must be a floating-point tensor, got dtype {sigmas.dtype}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def custom_sigmas(values: Sequence[float], shift: float = 1.0) -> torch.Tensor:
    """Sigmas for an explicit list of noise levels (e.g. a distilled model's few steps).

    Mirrors `scheduler.set_timesteps(sigmas=values)`: values are cast to float32, shifted, and a
    terminal 0 is appended, so the result has len(values) + 1 entries.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D list of noise levels, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"sigmas must lie in [0, 1], got {values!r}")
    if np.any(np.diff(arr) >= 0):
        raise ValueError(f"sigmas must be strictly decreasing, got {values!r}")
    sig = shift_sigmas(torch.from_numpy(arr.astype(np.float32)), shift)  # float32, as the scheduler
    return torch.cat([sig, sig.new_zeros(1)])


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """float32 Tensor[steps + 1]: the shifted linear schedule from 1 down to a final 0."""
    steps = _check_steps(steps)
    shift = _check_shift(shift)
    # float64 linspace first, then float32: the order HunyuanVideoPipeline + the scheduler use.
    return custom_sigmas(np.linspace(1.0, 0.0, steps + 1)[:-1], shift)


def timesteps_from_sigmas(
    sigmas: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """The timesteps a DiT is conditioned on: sigma * 1000 in the sigmas' dtype (float32)."""
    return torch.as_tensor(sigmas) * num_train_timesteps
