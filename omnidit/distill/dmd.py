"""Distribution matching distillation (DMD2-style, without its GAN term) for flow-matching models.

The student is a few-step generator (an x0 predictor sampled by x0-renoise over
`flow_sigmas(K)`, as a one-phase consistency student). Instead of matching the teacher's ODE
path sample by sample, it matches the teacher's *distribution*: two score models look at the
student's outputs re-noised to a random level,
  - the "real" one is the frozen teacher with its guidance (what good samples look like),
  - the "fake" one is a copy of the teacher kept fitted, by flow matching, to the student's own
    current outputs (what the student's samples look like),
and the student's x0 is pushed along x0_fake - x0_real: the KL gradient between the two
distributions, expressed through the score models' x0 predictions. The fake model is updated
more often than the student (two time-scale updates), so it tracks the moving student.

The flow conventions and guidance modes are the sampling package's (`flow.py`, `Denoiser`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnidit.distill.losses import guided_velocity
from omnidit.sampling import Denoiser, Text, flow_loss, noised, x0_from_velocity
from omnidit.sampling.flow import bcast, noised_from, randn_from


def generator_sample(student, noise: torch.Tensor, cond: Text, sigmas: torch.Tensor, k: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
    """The student's x0 after k_i steps of its own sampler, sample i of the batch (k [B] in [0, K)).

    "Backward simulation" (DMD2): steps before the last run without gradient, so the student is
    trained on the inputs it will really see at step k; the returned x0 [B, C, F, H, W] carries
    gradient through the last prediction only.
    """
    x = noise
    den = Denoiser(student, cond)
    with torch.no_grad():
        for j in range(int(k.max())):
            s, s_next = sigmas[j], sigmas[j + 1]
            renoised = noised(den.x0(x, s), s_next, randn_from(gen, x))
            x = torch.where(bcast(k > j), renoised, x)  # samples that stop earlier keep their x
    return den.x0(x, sigmas[k].to(x))  # [B] noise levels


def dm_noise_levels(b: int, gen: torch.Generator, lo: float = 0.02, hi: float = 0.98) -> torch.Tensor:
    """Noise levels at which the two score models compare distributions: U(lo, hi)."""
    return lo + (hi - lo) * torch.rand(b, generator=gen)


def distribution_matching_loss(x0: torch.Tensor, teacher, fake, cond: Text, uncond: Text | None,
                               gen: torch.Generator, *, scale: float, mode: str) -> torch.Tensor:
    """A surrogate whose gradient w.r.t. x0 (the student's output) is the DMD update direction.

    grad = (x0_fake - x0_real) / mean|x0 - x0_real| per sample (DMD's normalisation, so the step
    size does not depend on how far off the sample is), and loss = 0.5 * ||x0 - sg(x0 - grad)||^2
    (mean over elements), so d loss / d x0 = grad / numel. Zero when fake and real agree.
    """
    b = x0.shape[0]
    sigma = dm_noise_levels(b, gen).to(x0)
    with torch.no_grad():
        x0d = x0.detach()
        x_t = noised_from(x0d, sigma, gen)
        w = torch.full((b,), float(scale), device=x0.device)
        x0_real = x0_from_velocity(x_t, sigma, guided_velocity(teacher, x_t, sigma, cond, uncond, w, mode))
        x0_fake = Denoiser(fake, cond).x0(x_t, sigma)
        norm = (x0d - x0_real).abs().flatten(1).mean(1).clamp_min(1e-6)  # [B]
        grad = (x0_fake - x0_real) / bcast(norm)
    return 0.5 * F.mse_loss(x0.float(), (x0d - grad).float(), reduction="mean")


def fake_score_loss(fake, x0: torch.Tensor, cond: Text, gen: torch.Generator) -> torch.Tensor:
    """Flow matching of the fake score model on the student's (detached) samples: the DiT
    training loss, without text dropout."""
    return flow_loss(fake, x0.detach(), *cond, None, gen, dropout=0.0)
