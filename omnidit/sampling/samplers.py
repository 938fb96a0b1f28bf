"""Flow-matching samplers as plain functions (k-diffusion style).

Convention: x_s = (1 - s) * x0 + s * noise, and the model predicts the velocity
v = noise - x0, so dx/ds = v. A sampler walks `sigmas` (from `schedules.py`, last entry 0)
and calls `model_fn(x, sigma)` once per step, where `sigma` is Tensor[B] in the dtype of
`sigmas` (float32 from our schedules). Convert to DiT timesteps with
`timesteps_from_sigmas(sigma)`; to mirror diffusers exactly, then cast those to x's dtype.

Precision follows diffusers' FlowMatchEulerDiscreteScheduler.step: the update is computed
with x upcast to (at least) float32 and the result is cast back to the model output's dtype.

Stochastic samplers take `noise_sampler(x, sigma, sigma_next) -> eps` (noise.py), as
k-diffusion does, so the caller decides whose noise each sample gets.

`callback(step, total, x)` runs after every step with `step` = the number of steps done
(1..total). It may raise `Cancelled`, which propagates, so a caller stops within one step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from omnidit.sampling.flow import noised, x0_from_velocity
from omnidit.sampling.noise import NoiseSampler, batch_noise

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]


class Cancelled(Exception):
    """Raised by a callback to stop sampling; samplers let it propagate untouched."""


def _check_sigmas(sigmas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 entries (steps + 1), got shape {tuple(sigmas.shape)}")
    if not sigmas.is_floating_point():
        raise ValueError(f"sigmas must be floating point, got dtype {sigmas.dtype}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a leading batch dimension, got shape {tuple(x.shape)}")
    return sigmas.to(x.device)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # At least float32 (diffusers' `sample.to(torch.float32)`), but never lose float64.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def sample_euler(
    model_fn: ModelFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic Euler ODE solver: x <- x + (s_next - s) * v(x, s).

    With the HunyuanVideo schedule (`flow_sigmas(steps, shift)`) this is diffusers'
    HunyuanVideoPipeline denoising loop; with a short custom schedule it is the few-step
    deterministic sampler of distilled models.
    """
    sigmas = _check_sigmas(sigmas, x)
    total = sigmas.numel() - 1
    batch = x.shape[0]
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]  # 0-dim tensors
        v = model_fn(x, sigma.expand(batch))  # [B, ...] velocity
        # dt is a 0-dim tensor, so dt * v keeps v's dtype (as in the scheduler), then the
        # sum happens in float32 and is cast back to the model's dtype.
        x = (_upcast(x) + (sigma_next - sigma) * v).to(v.dtype)
        if callback is not None:
            callback(i + 1, total, x)
    return x


def sample_x0_renoise(
    model_fn: ModelFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Multistep consistency sampler: jump to the predicted x0, then re-noise to the next sigma.

    x0 = x - s * v;  x <- (1 - s_next) * x0 + s_next * eps,  eps = noise_sampler(s, s_next) fresh
    each step (default: the global RNG). At the final sigma 0 the result is exactly the last x0
    prediction. With `batch_noise(generator)` it does the arithmetic and noise draws of diffusers'
    scheduler with stochastic_sampling=True; `seeded_noise(seeds)` gives each sample its own stream.
    """
    sigmas = _check_sigmas(sigmas, x)
    total = sigmas.numel() - 1
    batch = x.shape[0]
    if noise_sampler is None:
        noise_sampler = batch_noise(None)
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = model_fn(x, sigma.expand(batch))  # [B, ...] velocity
        xf = _upcast(x)
        x0 = x0_from_velocity(xf, sigma, v)  # [B, ...] predicted clean sample
        eps = noise_sampler(xf, sigma, sigma_next)
        x = noised(x0, sigma_next, eps).to(v.dtype)
        if callback is not None:
            callback(i + 1, total, x)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": sample_euler, "x0_renoise": sample_x0_renoise}
STOCHASTIC = frozenset({"x0_renoise"})  # samplers that draw noise after the initial latents


def run_sampler(name: str, model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, *,
                noise_sampler: NoiseSampler | None = None, callback: Callback | None = None) -> torch.Tensor:
    """The sampler a model folder names (a key of SAMPLERS); deterministic ones ignore noise_sampler."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} not one of {tuple(SAMPLERS)}")
    kwargs = {"noise_sampler": noise_sampler} if name in STOCHASTIC else {}
    return SAMPLERS[name](model_fn, x, sigmas, callback=callback, **kwargs)
