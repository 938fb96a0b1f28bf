"""DiTConfig: the fields of diffusers' HunyuanVideo(1.5)Transformer3DModel configs, plus our presets.

Two families share the dataclass; `family` says which one (it comes from config.json's
`_class_name`, never from a field of its own there):
- "hunyuanvideo" (1.0): dual + single-stream blocks, pooled text and embedded guidance;
- "hunyuanvideo15": dual-stream blocks only, ByT5 glyph tokens (`text_embed_2_dim`), SigLIP image
  tokens (`image_embed_dim`), optional MeanFlow `timestep_r` (`use_meanflow`); real CFG.
Fields of the other family keep their defaults and are not written to config.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omnidit.dit.attention import check_backend_name

# diffusers' class name of each family; written into config.json so diffusers can load our folders.
DIFFUSERS_CLASS_NAME = "HunyuanVideoTransformer3DModel"
HV15_CLASS_NAME = "HunyuanVideo15Transformer3DModel"
FAMILIES = {"hunyuanvideo": DIFFUSERS_CLASS_NAME, "hunyuanvideo15": HV15_CLASS_NAME}
HV15 = "hunyuanvideo15"
HV15_TASKS = ("t2v", "i2v")
# Fields only one family has (everything else is common to both).
V10_ONLY = frozenset({"num_single_layers", "guidance_embeds", "pooled_projection_dim", "image_condition_type"})
V15_ONLY = frozenset({"text_embed_2_dim", "image_embed_dim", "target_size", "task_type", "use_meanflow"})


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
    # HunyuanVideo-1.5 only (family "hunyuanvideo15"):
    text_embed_2_dim: int = 1472  # ByT5 glyph-encoder width
    image_embed_dim: int = 1152  # SigLIP image-token width
    target_size: int = 640  # pixels of the pipeline's size buckets at 1:1
    task_type: str = "i2v"  # "t2v" | "i2v" (bookkeeping: image tokens decide per sample)
    use_meanflow: bool = False  # a second timestep embedder for MeanFlow's `timestep_r`
    family: str = field(default="hunyuanvideo", metadata={"family": True})
    attention_backend: str = field(default="sdpa", metadata={"runtime": True})

    def __post_init__(self) -> None:
        self.rope_axes_dim = tuple(int(a) for a in self.rope_axes_dim)
        if self.family not in FAMILIES:
            raise ValueError(f"DiTConfig.family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        positive = ["in_channels", "out_channels", "num_attention_heads", "attention_head_dim",
                    "patch_size", "patch_size_t", "text_embed_dim"]
        positive += ["text_embed_2_dim", "image_embed_dim"] if self.family == HV15 else ["pooled_projection_dim"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.family == HV15:
            self._check_hv15()
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

    def _check_hv15(self) -> None:
        if self.num_single_layers or self.guidance_embeds:
            raise ValueError(
                "HunyuanVideo-1.5 (family 'hunyuanvideo15') has no single-stream blocks and no guidance "
                f"embedder: need num_single_layers=0, guidance_embeds=False, got {self.num_single_layers}, "
                f"{self.guidance_embeds}"
            )
        if self.task_type not in HV15_TASKS:
            raise ValueError(f"DiTConfig.task_type must be one of {list(HV15_TASKS)}, got {self.task_type!r}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_volume(self) -> int:
        return self.patch_size_t * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        """Build from a diffusers config.json dict. The family comes from `_class_name` (or a `family`
        key); missing fields take that family's defaults; other `_`-prefixed keys are ignored."""
        kwargs = {k: v for k, v in d.items() if not k.startswith("_")}
        family = kwargs.pop("family", None) or (HV15 if d.get("_class_name") == HV15_CLASS_NAME else "hunyuanvideo")
        if family not in FAMILIES:
            raise ValueError(f"DiTConfig.family must be one of {sorted(FAMILIES)}, got {family!r}")
        known = _family_fields(family)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig field(s) {unknown} for {FAMILIES[family]}; allowed: {sorted(known)}")
        base = PRESETS["hunyuan-video-1.5"] if family == HV15 else PRESETS["hunyuan-video"]
        in_channels = kwargs.get("in_channels", base.in_channels)
        if kwargs.get("out_channels") is None and "out_channels" in kwargs:
            kwargs["out_channels"] = in_channels  # diffusers: out or in
        return dataclasses.replace(base, **kwargs)

    def to_dict(self, *, diffusers_version: str | None = None) -> dict[str, Any]:
        """A diffusers-compatible config.json dict (runtime-only fields such as the backend omitted)."""
        d: dict[str, Any] = {
            "_class_name": FAMILIES[self.family],
            "_diffusers_version": diffusers_version or _diffusers_version(),
        }
        for name in sorted(_family_fields(self.family)):
            value = getattr(self, name)
            d[name] = list(value) if isinstance(value, tuple) else value
        return d

    def replace(self, **changes: Any) -> DiTConfig:
        return dataclasses.replace(self, **changes)


def _family_fields(family: str) -> set[str]:
    """The config.json fields of a family (runtime-only fields and `family` itself excluded)."""
    fields = dataclasses.fields(DiTConfig)
    names = {f.name for f in fields if not (f.metadata.get("runtime") or f.metadata.get("family"))}
    return names - (V10_ONLY if family == HV15 else V15_ONLY)


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
    # HunyuanVideo-1.5 (8.3B): 54 dual-stream blocks, 16 x 128 heads, patch 1, 65 in (noisy latent,
    # condition latent, mask) / 32 out channels, Qwen2.5-VL 3584 + ByT5 1472 text, SigLIP 1152 image.
    "hunyuan-video-1.5": DiTConfig(
        family=HV15, in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128,
        num_layers=54, num_single_layers=0, num_refiner_layers=2, patch_size=1, patch_size_t=1,
        guidance_embeds=False, text_embed_dim=3584, pooled_projection_dim=0, text_embed_2_dim=1472,
        image_embed_dim=1152, rope_axes_dim=(16, 56, 56),
    ),
    # For tests: every 1.5 code path (MeanFlow included), a few thousand parameters.
    "tiny-1.5": DiTConfig(
        family=HV15, in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=2, num_single_layers=0, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
        patch_size_t=1, guidance_embeds=False, text_embed_dim=12, pooled_projection_dim=0,
        text_embed_2_dim=10, image_embed_dim=6, rope_axes_dim=(2, 2, 4), task_type="t2v", use_meanflow=True,
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
