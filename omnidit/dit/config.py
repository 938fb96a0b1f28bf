"""DiTConfig: the fields of diffusers' HunyuanVideoTransformer3DModel config, plus our presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omnidit.dit.attention import check_backend_name

# diffusers' class name for this architecture; written into config.json so diffusers can load our folders.
DIFFUSERS_CLASS_NAME = "HunyuanVideoTransformer3DModel"


@dataclass
class DiTConfig:
    """Architecture of the HunyuanVideo transformer. Defaults are HunyuanVideo's (13B)."""

    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20  # dual-stream blocks
    num_single_layers: int = 40  # single-stream blocks
    num_refiner_layers: int = 2  # text token-refiner blocks
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)  # (frames, height, width) slices of a head
    image_condition_type: str | None = None  # diffusers' I2V variants; only None is supported
    attention_backend: str = field(default="sdpa", metadata={"runtime": True})

    def __post_init__(self) -> None:
        self.rope_axes_dim = tuple(int(a) for a in self.rope_axes_dim)
        for name in (
            "in_channels", "out_channels", "num_attention_heads", "attention_head_dim",
            "patch_size", "patch_size_t", "text_embed_dim", "pooled_projection_dim",
        ):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("num_layers", "num_single_layers", "num_refiner_layers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"DiTConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.image_condition_type is not None:
            raise ValueError(
                f"DiTConfig.image_condition_type={self.image_condition_type!r} is not supported; "
                "allowed: None (text-to-video/image; the image-to-video variants "
                "'latent_concat'/'token_replace' are not implemented)"
            )
        if self.qk_norm != "rms_norm":
            raise ValueError(f"DiTConfig.qk_norm must be 'rms_norm' (HunyuanVideo's), got {self.qk_norm!r}")
        if len(self.rope_axes_dim) != 3 or any(a <= 0 or a % 2 for a in self.rope_axes_dim):
            raise ValueError(
                f"DiTConfig.rope_axes_dim must be three positive even ints, got {self.rope_axes_dim!r}"
            )
        if sum(self.rope_axes_dim) != self.attention_head_dim:
            raise ValueError(
                f"DiTConfig.rope_axes_dim must sum to attention_head_dim={self.attention_head_dim}, "
                f"got {self.rope_axes_dim!r} (sum {sum(self.rope_axes_dim)})"
            )
        check_backend_name(self.attention_backend, field="DiTConfig.attention_backend")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_volume(self) -> int:
        return self.patch_size_t * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        """Build from a diffusers config.json dict; `_`-prefixed bookkeeping keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if not k.startswith("_")}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig field(s) {unknown}; allowed: {sorted(known)}")
        if kwargs.get("out_channels") is None and "out_channels" in kwargs:
            kwargs["out_channels"] = kwargs.get("in_channels", cls.in_channels)  # diffusers: out or in
        return cls(**kwargs)

    def to_dict(self, *, diffusers_version: str | None = None) -> dict[str, Any]:
        """A diffusers-compatible config.json dict (runtime-only fields such as the backend omitted)."""
        d: dict[str, Any] = {
            "_class_name": DIFFUSERS_CLASS_NAME,
            "_diffusers_version": diffusers_version or _diffusers_version(),
        }
        for f in dataclasses.fields(self):
            if not f.metadata.get("runtime"):
                value = getattr(self, f.name)
                d[f.name] = list(value) if isinstance(value, tuple) else value
        return d

    def replace(self, **changes: Any) -> DiTConfig:
        return dataclasses.replace(self, **changes)


def _diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except ImportError:  # diffusers is only needed to read the version string
        return "0.32.0"


PRESETS: dict[str, DiTConfig] = {
    # tencent/HunyuanVideo (13B): 20 dual + 40 single blocks, 24 x 128 heads.
    "hunyuan-video": DiTConfig(),
    # For tests: every code path, a few thousand parameters.
    "tiny": DiTConfig(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=12,
        pooled_projection_dim=10,
        rope_axes_dim=(2, 2, 4),
    ),
    # The embedded CPU model (trained on omnidit.shapes): ~10M parameters, sized so that an
    # hour of a 2-core CPU trains it (64 video tokens per 64x64 frame after the 8x VAE).
    "shapes": DiTConfig(
        in_channels=16,
        out_channels=16,
        num_attention_heads=4,
        attention_head_dim=64,
        num_layers=2,
        num_single_layers=4,
        num_refiner_layers=1,
        mlp_ratio=4.0,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=False,
        text_embed_dim=384,
        pooled_projection_dim=384,
        rope_axes_dim=(16, 24, 24),
    ),
}


def preset(name: str) -> DiTConfig:
    """A fresh copy of a named preset config."""
    if name not in PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; allowed: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
