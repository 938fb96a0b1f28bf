"""VideoVAE: pixels <-> latents with diffusers' AutoencoderKLHunyuanVideo (or its 1.5 successor).

Latents handed to and from the DiT are already multiplied by the VAE's scaling_factor, as
in diffusers' HunyuanVideoPipeline (which divides by it right before `vae.decode`).
Video tensors are [B, 3, F, H, W] in [-1, 1]; F must be 1 mod the temporal ratio (the causal
VAE keeps the first frame alone), H and W multiples of the spatial ratio.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import torch

from omnidit.tokenizers.image_conv import use_image_conv
from omnidit.tokenizers.onednn_conv import use_onednn_conv3d

# Decode/encode above this many pixels per frame switch diffusers' spatial tiling on for the
# call, bounding activation memory (tiles are 256x256 by default, blended at the seams).
DEFAULT_AUTO_TILING_PIXELS = 512 * 512
# diffusers VAE classes a vae/ folder may name: HunyuanVideo's (8x spatial, 16 channels) and
# HunyuanVideo-1.5's (16x spatial, 32 channels); both: 4x temporal, the same config fields.
VAE_CLASSES = ("AutoencoderKLHunyuanVideo", "AutoencoderKLHunyuanVideo15")


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3].

    Same numbers as diffusers' VideoProcessor.postprocess_video(output_type="pil"):
    x * 0.5 + 0.5 clamped to [0, 1] in the video's dtype, then float32 * 255, rounded half to even.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, F, H, W], got shape {tuple(video.shape)}")
    x = (video * 0.5 + 0.5).clamp(0, 1)  # [B, 3, F, H, W] in the video's own dtype
    x = x.permute(0, 2, 3, 4, 1).float()  # [B, F, H, W, 3]
    return (x * 255).round().to(torch.uint8)


def _inference_tree(vae: torch.nn.Module) -> torch.nn.Module:
    """A copy of `vae`'s module tree in eval mode with the fast convolution paths wrapped in. The copy
    has its own module objects but the very same parameter and buffer tensors (no second copy of the
    weights); `vae` itself keeps its classes, children and mode."""
    shared = {id(t): t for t in itertools.chain(vae.parameters(), vae.buffers())}
    tree = copy.deepcopy(vae, memo=shared)
    use_onednn_conv3d(tree)  # CPU decodes of one video: ~2x faster than batching it with a copy
    use_image_conv(tree)  # one-frame latents (images) through 2D convs: 1.4x (batch 1) to 4x faster
    return tree.eval()


class VideoVAE:
    def __init__(self, vae: torch.nn.Module, *, auto_tiling_pixels: int | None = DEFAULT_AUTO_TILING_PIXELS):
        self.vae = _inference_tree(vae)  # diffusers' AutoencoderKLHunyuanVideo, our copy of its tree
        self.auto_tiling_pixels = auto_tiling_pixels

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> VideoVAE:
        """Load a diffusers vae folder, or the vae/ subfolder of a pipeline folder. dtype None = float32.
        The class is the one its config names: HunyuanVideo's or HunyuanVideo-1.5's (VAE_CLASSES)."""
        import diffusers

        path = Path(path)
        if (path / "vae" / "config.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise ValueError(f"path {str(path)!r} has no config.json (expected a diffusers vae folder)")
        name = json.loads((path / "config.json").read_text()).get("_class_name", VAE_CLASSES[0])
        if name not in VAE_CLASSES:
            raise ValueError(f"vae {str(path)!r} is a {name}; supported: {list(VAE_CLASSES)}")
        vae_cls = getattr(diffusers, name)
        vae = vae_cls.from_pretrained(path, torch_dtype=dtype or torch.float32, local_files_only=True)
        if device is not None:
            vae.to(device)
        return cls(vae, **kwargs)

    # -- config ---------------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def spatial_ratio(self) -> int:
        return int(self.vae.config.spatial_compression_ratio)

    @property
    def temporal_ratio(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VideoVAE:
        self.vae.to(device=device, dtype=dtype)
        return self

    def validate(self, frames: int, height: int, width: int) -> None:
        """Raise ValueError naming the field if a video of this size cannot be encoded."""
        t, s = self.temporal_ratio, self.spatial_ratio
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % t:
            allowed = ", ".join(str(1 + t * k) for k in range(4))
            raise ValueError(f"frames must be 1 mod {t} ({allowed}, ...), got {frames!r}")
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < s or value % s:
                raise ValueError(f"{name} must be a positive multiple of {s} ({s}, {2 * s}, {3 * s}, ...), got {value!r}")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latents for a video of the given size."""
        self.validate(frames, height, width)
        t, s = self.temporal_ratio, self.spatial_ratio
        return (self.latent_channels, (frames - 1) // t + 1, height // s, width // s)

    # -- memory knobs (pass-through to diffusers) --------------------------------------------
    def enable_tiling(self, **kwargs: Any) -> None:
        self.vae.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.vae.disable_tiling()

    def _auto_tiling(self, pixels_per_frame: int) -> bool:
        """Turn tiling on for one call when the frame is large; returns whether it did."""
        if self.auto_tiling_pixels is None or self.vae.use_tiling or pixels_per_frame <= self.auto_tiling_pixels:
            return False
        self.vae.use_tiling = True
        return True

    # -- encode / decode -------------------------------------------------------------------
    def _split(self, axis) -> bool:
        """Whether a call under `axis` cuts its tiles across K > 1 processes (only a call that tiles)."""
        return axis is not None and axis.world_size > 1 and self.vae.use_tiling

    @torch.no_grad()
    def encode(
        self, video: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None, axis=None
    ) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> latents [B, C, F', H', W'] * scaling_factor.

        sample=False takes the posterior mean; sample=True draws from it with `generator`.
        `axis` (K > 1 processes): an encode that tiles is split tile by tile across them, as `decode`.
        """
        if video.ndim != 5:
            raise ValueError(f"video must be 5-D [B, 3, F, H, W], got shape {tuple(video.shape)}")
        if video.shape[1] != self.vae.config.in_channels:
            raise ValueError(f"video channels must be {self.vae.config.in_channels}, got {video.shape[1]}")
        _, _, f, h, w = video.shape
        self.validate(int(f), int(h), int(w))
        tiled = self._auto_tiling(h * w)
        x = video.to(device=self.device, dtype=self.dtype)
        try:
            if self._split(axis):
                from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

                from omnidit.tokenizers.vae_tiling import tiled_encode, tiles_of

                posterior = DiagonalGaussianDistribution(tiled_encode(self.vae, x, tiles_of(self.vae), axis=axis))
            else:
                posterior = self.vae.encode(x).latent_dist
        finally:
            if tiled:
                self.vae.use_tiling = False
        z = posterior.sample(generator=generator) if sample else posterior.mode()  # [B, C, F', H', W']
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, axis=None) -> torch.Tensor:
        """Latents (scaled) [B, C, F', H', W'] -> video [B, 3, 1 + t(F'-1), s H', s W'] in [-1, 1].

        A decode that tiles runs vae_tiling.py's (diffusers' frames, one temporal window alive at a
        time instead of every tile of the video); `axis` (omnidit/parallel/state.py, K > 1
        processes) splits it tile by tile across them, with the same frames as one process's."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, F, H, W], got shape {tuple(latents.shape)}"
            )
        # Cast to the VAE's dtype first, then unscale — the order diffusers' pipeline uses.
        z = latents.to(device=self.device, dtype=self.dtype) / self.scaling_factor
        s = self.spatial_ratio
        tiled = self._auto_tiling(z.shape[-2] * z.shape[-1] * s * s)
        try:
            if self.vae.use_tiling:
                from omnidit.tokenizers.vae_tiling import tiled_decode, tiles_of

                return tiled_decode(self.vae, z, tiles_of(self.vae), axis=axis)  # [B, 3, F, H, W]
            return self.vae.decode(z).sample  # [B, 3, F, H, W]
        finally:
            if tiled:
                self.vae.use_tiling = False
