"""The distillation objectives, as plain functions of (student, teacher, clean latents, text).

The flow conventions (noising, velocity, x0, the timestep scale) and the guidance modes are the
sampling package's (`flow.py`, `Denoiser`); text conditioning is a tuple
`(states [B, L, D], mask [B, L], pooled [B, P])`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from omnidit.sampling import Denoiser, Text, training_sigmas
from omnidit.sampling.flow import bcast, noised_from


def guided_velocity(dit, x: torch.Tensor, sigma: torch.Tensor, cond: Text, uncond: Text | None,
                    scale: torch.Tensor, mode: str) -> torch.Tensor:
    """The velocity a teacher's sampler integrates at (x [B, C, F, H, W], sigma [B]), fp32, under
    guidance `mode` with per-sample `scale` [B] (see `Denoiser.for_mode`)."""
    return Denoiser.for_mode(dit, mode, cond, uncond, scale)(x, sigma)


def guidance_distill_loss(student, teacher, x0: torch.Tensor, cond: Text, uncond: Text, gen: torch.Generator, *,
                          scale_range: tuple[float, float] = (1.0, 8.0)) -> torch.Tensor:
    """MSE between the student's velocity given scale w as an input and the teacher's CFG velocity
    at w, for w ~ U(scale_range) per sample and logit-normal noise levels."""
    b = x0.shape[0]
    sigma = training_sigmas(b, gen).to(x0)
    x_t = noised_from(x0, sigma, gen)
    lo, hi = scale_range
    w = (lo + (hi - lo) * torch.rand(b, generator=gen)).to(x0)
    with torch.no_grad():
        target = guided_velocity(teacher, x_t, sigma, cond, uncond, w, "cfg")
    pred = Denoiser(student, cond, embedded=w)(x_t, sigma)
    return F.mse_loss(pred, target)


def consistency_grid(phases: int, sub_steps: int, shift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's discretisation for phased consistency distillation.

    Returns (grid float32 [N + 1] from 1 down to 0, phase_end float32 [N]) with N = phases * sub_steps:
    interval i goes from grid[i] to grid[i + 1] and lies inside one phase, whose lower edge is
    phase_end[i]. The phase edges are `flow_sigmas(phases, shift)`, the student's sampling schedule.
    """
    from omnidit.sampling import custom_sigmas

    if phases < 1 or sub_steps < 1:
        raise ValueError(f"phases and sub_steps must be >= 1, got {phases}, {sub_steps}")
    n = phases * sub_steps
    grid = custom_sigmas(np.linspace(1.0, 0.0, n + 1)[:-1], shift)  # [N + 1], ends at 0
    ends = grid[(torch.arange(n) // sub_steps + 1) * sub_steps]  # [N]
    return grid, ends


def pseudo_huber(diff: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample sqrt(mean(diff^2) + c^2) - c: L2-like for large errors, quadratic near 0."""
    return torch.sqrt(diff.float().pow(2).flatten(1).mean(1) + c * c) - c


def consistency_distill_loss(student, target, teacher, x0: torch.Tensor, cond: Text, uncond: Text | None,
                             gen: torch.Generator, *, grid: torch.Tensor, phase_end: torch.Tensor, scale: float,
                             mode: str, huber_c: float = 1e-3, student_guidance: bool = False) -> torch.Tensor:
    """Phased consistency distillation for a flow-matching teacher.

    For a random interval (s_a -> s_b) of the teacher grid, inside a phase ending at e:
      x_a  = noised data at s_a
      x_b  = x_a + (s_b - s_a) v_teacher(x_a, s_a)          one guided teacher Euler step
      f(x, s) = x + (e - s) v(x, s)                           the consistency function of the phase
      loss = pseudo_huber(f_student(x_a, s_a) - f_target(x_b, s_b))
    `target` is the EMA of the student (no gradient); f(x, e) = x holds by construction, so the
    last interval of a phase is anchored to the teacher's own step. With one phase (e = 0) f is an
    x0 prediction (sampled multistep with x0-renoise); with K phases the student's Euler steps over
    `flow_sigmas(K)` land on the phase edges.
    """
    b = x0.shape[0]
    i = torch.randint(0, len(phase_end), (b,), generator=gen)
    s_a, s_b, e = grid[i].to(x0), grid[i + 1].to(x0), phase_end[i].to(x0)  # [B] each
    x_a = noised_from(x0, s_a, gen)
    w = torch.full((b,), float(scale), device=x0.device)
    embedded = w if student_guidance else None
    with torch.no_grad():
        v_t = guided_velocity(teacher, x_a, s_a, cond, uncond, w, mode)
        x_b = x_a + bcast(s_b - s_a) * v_t
        y = x_b + bcast(e - s_b) * Denoiser(target, cond, embedded=embedded)(x_b, s_b)
        y = torch.where(bcast(s_b == e), x_b, y)  # f(x, e) = x exactly, whatever v(x, e) is
    pred = x_a + bcast(e - s_a) * Denoiser(student, cond, embedded=embedded)(x_a, s_a)
    return pseudo_huber(pred - y, huber_c).mean()
