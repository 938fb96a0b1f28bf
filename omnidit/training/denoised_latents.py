"""Latents as a DiT leaves them, to fine-tune a decoder on what it will really decode.

A decoder trained on encoded scenes only sees the encoder's sharp latents. A DiT's samples
differ from those in ways it never saw: the shipped decoder draws the DiT's small squares and
triangles as circles, although a probe reads their shape from the generated latents
(`experiments/shape_diagnosis.py`). `DenoisedLatents` noises a scene's encoded latents to a random
noise level and lets a model's DiT predict them back in one step, x0 = x_s - s * v. A few-step
(consistency-distilled) model predicts there what its sampler ends on, so the result looks like
a sample while keeping the rendered scene's layout; paired with the rendered frames, it teaches
the decoder to draw the scene the DiT meant. The encoder, hence the latent space, stays as is.
"""

from __future__ import annotations

import torch

from omnidit.sampling import Denoiser
from omnidit.sampling.flow import bcast, noised_from


class DenoisedLatents:
    """`denoise(z, prompts, gen)`: encoded latents (unscaled, as the VAE's encoder gives them)
    -> a DiT's one-step reconstruction of them from noise level s ~ U(sigma_range), unscaled.

    `p_clean` of the batch (per sample) is passed through untouched, so the decoder keeps
    decoding the encoder's own latents too."""

    def __init__(self, model: str, *, scaling_factor: float, device: torch.device,
                 sigma_range: tuple[float, float] = (0.2, 0.8), p_clean: float = 0.25,
                 text_encoder: str | None = None):
        from omnidit.pipeline import Pipeline

        lo, hi = sigma_range
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"sigma_range must satisfy 0 < low <= high < 1, got {sigma_range!r}")
        if not 0.0 <= p_clean < 1.0:
            raise ValueError(f"p_clean must be in [0, 1), got {p_clean!r}")
        self.model = Pipeline.from_pretrained(model, device=device, dtype=torch.float32, text_encoder=text_encoder)
        self.model.dit.requires_grad_(False)
        self.uncond = None  # the negative prompt's text states, encoded once
        if self.model.config.guidance_mode == "cfg":
            self.uncond = self.model.encode_text([self.model.config.negative_prompt or ""])
        self.scale = float(scaling_factor)
        self.sigma_range, self.p_clean, self.device = (float(lo), float(hi)), float(p_clean), device

    @torch.no_grad()
    def denoise(self, z: torch.Tensor, prompts: list[str], gen: torch.Generator) -> torch.Tensor:
        """z `[B, C, F', H', W']` (unscaled) -> the same shape, each sample re-predicted by the DiT
        (or left clean with probability p_clean). Noise and levels come from the CPU `gen`."""
        b = z.shape[0]
        if len(prompts) != b:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {b} latents")
        lo, hi = self.sigma_range
        sigma = (lo + (hi - lo) * torch.rand(b, generator=gen)).to(self.device)  # [B]
        clean = (torch.rand(b, generator=gen) < self.p_clean).to(self.device)  # [B]
        x0 = z.float() * self.scale  # [B, C, F', H', W'], the DiT's (scaled) latent space
        xs = noised_from(x0, sigma, gen)
        m = self.model
        uncond = None if self.uncond is None else tuple(t.expand(b, *t.shape[1:]) for t in self.uncond)
        scale = torch.full((b,), m.config.guidance, device=self.device)
        den = Denoiser.for_mode(m.dit, m.config.guidance_mode, m.encode_text(prompts), uncond, scale)
        pred = den.x0(xs, sigma)  # [B, C, F', H', W'], the predicted clean latents
        out = torch.where(bcast(clean, x0), x0, pred)
        return (out / self.scale).to(z.dtype)
