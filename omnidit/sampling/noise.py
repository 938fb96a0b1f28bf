"""Noise samplers for stochastic samplers: `noise_sampler(x, sigma, sigma_next) -> eps` like `x`.

The caller owns the randomness (k-diffusion's `noise_sampler`), so a seed's output does not
depend on what else shares its batch: `seeded_noise` keeps one CPU generator per sample.
Draws happen on the CPU generator and then move to x's device and dtype, so every device
(and every rank of a sequence-parallel group) sees the same noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def batch_noise(generator: torch.Generator | None) -> NoiseSampler:
    """One draw for the whole batch per step from `generator` (None: the global RNG); this is
    diffusers' stochastic scheduler, whose noise depends on the batch it shares."""

    def sample(x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    return sample


def seeded_noise(seeds: Sequence[int], offset: int = 0) -> NoiseSampler:
    """Sample i draws from its own CPU generator seeded `seeds[i] + offset`: the same eps for a
    seed alone, in any batch and at any position in it."""
    gens = [torch.Generator("cpu").manual_seed(int(s) + offset) for s in seeds]

    def sample(x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(gens):
            raise ValueError(f"seeded_noise has {len(gens)} seeds for a batch of {x.shape[0]}")
        one = (1, *x.shape[1:])
        eps = [torch.randn(one, generator=g, dtype=x.dtype) for g in gens]
        return torch.cat(eps).to(x.device)

    return sample
