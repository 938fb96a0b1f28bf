"""The flow-matching conventions, once: how data is noised, what the DiT predicts, and its timestep.

    x_s = (1 - s) x0 + s eps      s = sigma in [0, 1] (1 is pure noise), eps ~ N(0, I)
    v   = eps - x0                 the DiT's prediction (velocity, dx_s/ds)
    x0  = x_s - s v                the clean sample a velocity implies
    t   = s * 1000                 the timestep the DiT is conditioned on (`timesteps_from_sigmas`)

Inference (pipeline, samplers), training, distillation and DMD all go through these functions
and `Denoiser` (denoiser.py), so none of them re-derives the parameterisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnidit.sampling.schedules import shift_sigmas, timesteps_from_sigmas

__all__ = [
    "bcast",
    "flow_loss",
    "noised",
    "noised_from",
    "randn_from",
    "timesteps_from_sigmas",
    "training_sigmas",
    "velocity_target",
    "x0_from_velocity",
]


def bcast(sigma: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample `[B]` (or a scalar) -> broadcastable against `[B, C, F, H, W]`."""
    sigma = torch.as_tensor(sigma)
    if sigma.ndim == 0:
        return sigma
    ndim = like.ndim if like is not None else 5
    return sigma.view(-1, *([1] * (ndim - 1)))


def noised(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps, sigma `[B]` or a scalar."""
    s = bcast(sigma, x0)
    return (1 - s) * x0 + s * eps


def x0_from_velocity(x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = x_s - s v: the clean sample the velocity `v` predicts from x_s."""
    return x - bcast(sigma, x) * v


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """What the DiT is trained to predict at any noise level: v = eps - x0."""
    return eps - x0


def randn_from(gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Noise shaped like `like`, drawn on the (CPU) generator's device, so every device sees the
    same draws, then moved to `like`'s device and dtype."""
    device = gen.device if gen is not None else like.device
    return torch.randn(like.shape, generator=gen, device=device).to(like)


def noised_from(x0: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """x_s at `sigma`, the noise drawn from the CPU generator `gen` (same draws on every device)."""
    return noised(x0, sigma, randn_from(gen, x0))


def training_sigmas(b: int, gen: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """Noise levels for training `[B]`: logit-normal (SD3), with 10 % uniform so both ends are
    trained; `shift` > 1 moves them towards pure noise, as the sampling schedules' shift does."""
    s = torch.sigmoid(torch.randn(b, generator=gen))
    u = torch.rand(b, generator=gen)
    return shift_sigmas(torch.where(torch.rand(b, generator=gen) < 0.1, u, s), shift)


def flow_loss(model, x0: torch.Tensor, text, mask, pooled, null, gen: torch.Generator, dropout: float,
              shift: float = 1.0) -> torch.Tensor:
    """The DiT's training objective: MSE between predicted and true velocity at x_s.

    `null` is the empty prompt's (states, mask, pooled), swapped in for a `dropout` fraction of
    the batch so the model also learns the unconditional velocity CFG needs (None: no dropout)."""
    b = x0.shape[0]
    drop = (torch.rand(b, generator=gen) < dropout).to(x0.device)
    if drop.any():
        text, mask, pooled = text.clone(), mask.clone(), pooled.clone()
        text[drop], mask[drop], pooled[drop] = null[0].to(text), null[1].to(mask), null[2].to(pooled)
    sigma = training_sigmas(b, gen, shift).to(x0)
    eps = randn_from(gen, x0)
    v = model(noised(x0, sigma, eps), timesteps_from_sigmas(sigma), text, mask, pooled)  # [B, C, F, H, W]
    return F.mse_loss(v.float(), velocity_target(x0, eps).float())
