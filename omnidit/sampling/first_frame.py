"""A training-free first-frame condition for a text-to-video flow model (image-to-video without training).

The start image's clean latent `z` (the VAE's encoding of the image as a one-frame video: a causal
video VAE keeps the first frame alone, so `z` is exactly a video's first latent frame) replaces the
first latent frame of the model's input at every step, noised to that step's level with one fixed
noise draw `eps`, so the frame lies on the flow's straight path `x_s = (1 - s) z + s eps` (flow.py).
The velocity returned for that frame is the straight path's from `z` through the sampler's own
state, `(x - z) / s`, so any sampler (Euler, the x0 re-noising one with its fresh draws) lands
exactly on `z` at sigma 0. The
later frames see the conditioned frame through attention and follow the prompt.

It wraps a sampler's `model_fn(x, sigma) -> v` (a Denoiser, after guidance), so CFG, step
caching and every sampler work unchanged. Each sample has its own image or none (`mask`); `eps`
is the sample's own initial noise of that frame, so a seed's output does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from omnidit.sampling.flow import bcast, noised

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _with_first(
    x: torch.Tensor, first: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """x `[B, C, F, H, W]` with frame 0 of the masked samples replaced by `first` `[B, C, 1, H, W]`."""
    keep = x[:, :, :1]
    return torch.cat(
        [torch.where(bcast(mask, x), first.to(x), keep), x[:, :, 1:]], dim=2
    )  # [B, C, F, H, W]


def path_velocity(
    x: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The velocity of the straight path from the clean `z` through the state `x` at `sigma`:
    (x - z) / s, i.e. eps - z for x = (1 - s) z + s eps (flow.py), whatever eps the sampler drew;
    so x0 = x - s v is exactly `z` (0 at s = 0, where x is z already)."""
    s = bcast(sigma, x)
    return torch.where(s > 0, (x - z) / torch.clamp(s, min=1e-12), torch.zeros_like(x))


def condition_first_frame(
    model_fn: ModelFn,
    latent: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> ModelFn:
    """`model_fn` with latent frame 0 held to the start images.

    latent: `[B, C, 1, H', W']` the images' clean latents (any values where `mask` is False);
    noise: `[B, C, 1, H', W']` the draw each is re-noised with; mask: `[B]` bool, which samples have
    an image (None: all).
    """
    if latent.ndim != 5 or latent.shape[2] != 1 or noise.shape != latent.shape:
        raise ValueError(
            f"latent and noise must both be [B, C, 1, H, W], got {tuple(latent.shape)} and "
            f"{tuple(noise.shape)}"
        )
    mask = (
        torch.ones(latent.shape[0], dtype=torch.bool)
        if mask is None
        else torch.as_tensor(mask, dtype=torch.bool)
    )
    if mask.shape != (latent.shape[0],):
        raise ValueError(
            f"mask must be [B] = [{latent.shape[0]}], got {tuple(mask.shape)}"
        )
    latent, noise = latent.float(), noise.float()

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if (
            x.shape[0] != latent.shape[0]
            or x.shape[1] != latent.shape[1]
            or x.shape[3:] != latent.shape[3:]
        ):
            raise ValueError(
                f"x {tuple(x.shape)} does not match the start latents {tuple(latent.shape)}"
            )
        m, z = mask.to(x.device), latent.to(x.device)
        s = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        first = noised(
            z, s, noise.to(x.device)
        )  # [B, C, 1, H', W'] at this step's level
        v = model_fn(_with_first(x, first, m), sigma)  # [B, C, F', H', W']
        return _with_first(v, path_velocity(x[:, :, :1].float(), z, s), m)

    return fn
