"""A small PatchGAN discriminator and hinge losses, for sharpening a VAE decoder.

An L1-trained decoder paints the conditional median of what a latent could mean: where an
8x8 latent leaves a small object's corners uncertain, that is a rounded blob, and a square or
triangle reads as a circle. An adversarial term on patches penalises exactly that blur (the
same reason the SD and HunyuanVideo VAEs train with one). Video frames are judged one by one.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """[N, 3, H, W] in [-1, 1] -> [N, 1, H/8, W/8] real/fake logits, one per ~22 px patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(2):  # H/2 -> H/8
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.GroupNorm(8, ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


def video_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] -> [B*F, 3, H, W]."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def discriminator_loss(disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss on video tensors `[B, 3, F, H, W]`; `fake` is detached here."""
    return (torch.relu(1.0 - disc(video_frames(real))).mean()
            + torch.relu(1.0 + disc(video_frames(fake.detach()))).mean())


def generator_loss(disc: PatchDiscriminator, fake: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial term: raise the discriminator's score of its reconstructions."""
    return -disc(video_frames(fake)).mean()
