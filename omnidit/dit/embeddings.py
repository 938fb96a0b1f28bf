"""Embeddings: sinusoidal timesteps, condition MLPs, patchify/unpatchify and 3D rotary positions."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_sinusoids(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """`[B]` (0..1000, may be fractional) -> `[B, dim]` as `[cos | sin]` (diffusers' flip_sin_to_cos=True)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)  # [half]
    freqs = torch.exp(exponent / half)  # [half]
    args = t[:, None].float() * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, dim]


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear (diffusers' TimestepEmbedding and PixArtAlphaTextProjection share this)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))  # [B, dim]


class ConditionEmbedding(nn.Module):
    """Timestep (+ guidance) + pooled text -> the conditioning vector `temb` every block is modulated by."""

    def __init__(self, dim: int, pooled_dim: int, guidance_embeds: bool = False):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim)
        self.text_embedder = MLPEmbedder(pooled_dim, dim)
        self.guidance_embedder = MLPEmbedder(256, dim) if guidance_embeds else None

    def forward(
        self, timestep: torch.Tensor, pooled: torch.Tensor, guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        temb = self.timestep_embedder(timestep_sinusoids(timestep).to(pooled.dtype))  # [B, D]
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("guidance is required: this DiT has guidance_embeds=True (pass guidance [B], x1000)")
            temb = temb + self.guidance_embedder(timestep_sinusoids(guidance).to(pooled.dtype))  # [B, D]
        return temb + self.text_embedder(pooled)  # [B, D]


class PatchEmbed(nn.Module):
    """Non-overlapping 3D patches -> tokens. Keeps diffusers' Conv3d parameter; runs as one matmul."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch
        B, C, T, H, W = x.shape
        x = x.reshape(B, C, T // pt, pt, H // ph, ph, W // pw, pw)  # [B, C, T', pt, H', ph, W', pw]
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, -1, C * pt * ph * pw)  # [B, N, C*pt*ph*pw]
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)  # [B, N, D]


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    """`[B, N, C*pt*ph*pw]` tokens (features ordered C, pt, ph, pw) -> `[B, C, T, H, W]`."""
    (T, H, W), (pt, ph, pw) = grid, patch
    B = x.shape[0]
    x = x.reshape(B, T, H, W, -1, pt, ph, pw)  # [B, T', H', W', C, pt, ph, pw]
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # [B, C, T', pt, H', ph, W', pw]
    return x.reshape(B, -1, T * pt, H * ph, W * pw)  # [B, C, T, H, W]


def rope_3d(
    grid: tuple[int, int, int], axes_dim: tuple[int, int, int], theta: float, device: torch.device
) -> torch.Tensor:
    """Rotary table for a (T, H, W) token grid: complex64 `[N, head_dim // 2]`, unit phasors.

    Each axis gets `axes_dim[i]` channels (as pairs); frequencies and grid are float32 like diffusers'.
    Column j rotates the channel pair (2j, 2j + 1) of every head.
    """
    coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in grid], indexing="ij")
    angles = []
    for pos, dim in zip(coords, axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))  # [dim/2]
        angles.append(torch.outer(pos.reshape(-1), freqs))  # [N, dim/2]
    angle = torch.cat(angles, dim=1)  # [N, head_dim/2]
    return torch.complex(angle.cos(), angle.sin())  # [N, head_dim/2]


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of `x [B, N, H, D]` by `freqs [N, D/2]` (complex); math in float32 like diffusers.

    One complex multiply is the same arithmetic as diffusers' cos/sin form and far fewer kernels.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, N, H, D/2] complex64
    return torch.view_as_real(pairs * freqs[:, None]).flatten(-2).to(x.dtype)  # [B, N, H, D]


def rope_with_text_identity(freqs: torch.Tensor, n_text: int) -> torch.Tensor:
    """Extend a video table `[N, D/2]` by `n_text` identity rotations so one call covers `[video | text]`."""
    return torch.cat([freqs, freqs.new_ones(n_text, freqs.shape[1])])  # [N + L, D/2]
