"""What a model folder says about how to sample from it: defaults and limits, in one place.

A diffusers HunyuanVideo folder carries no such section, so its values come from the
published recipe (50 steps, embedded guidance 6.0, shift from its scheduler config).
omnidit's own model folders write an `"omnidit"` section in `model_index.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from omnidit.request import parse_cache
from omnidit.sampling.guidance import GUIDANCE_MODES
from omnidit.sampling.samplers import SAMPLERS


@dataclass
class PipelineConfig:
    steps: int = 50  # default denoising steps (`steps=None`)
    shift: float = 7.0  # flow-matching timestep shift
    guidance: float = 6.0  # default guidance scale
    guidance_mode: str = "embedded"  # embedded: one forward with the scale as input; cfg: cond + uncond
    negative_prompt: str = ""  # default negative prompt in cfg mode
    sampler: str = "euler"
    height: int = 720
    width: int = 1280
    frames: int = 1
    fps: int = 24
    max_height: int = 1280
    max_width: int = 1280
    max_frames: int = 129
    size_multiple: int = 16  # height/width must be multiples of this (VAE x patch)
    cache: str | None = None  # default step-cache SPEC (request.parse_cache), None: no caching

    def __post_init__(self) -> None:
        if self.guidance_mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance_mode {self.guidance_mode!r} not one of {GUIDANCE_MODES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} not one of {tuple(SAMPLERS)}")
        if self.cache is not None:
            parse_cache(self.cache, "sampling.cache")  # a model folder's default must parse like a request's

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown pipeline settings {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def read_pipeline_config(model_dir: Path, model_index: dict, guidance_embeds: bool) -> PipelineConfig:
    """Defaults for `model_dir`: its own `"omnidit"."sampling"` section, else HunyuanVideo's recipe."""
    own = model_index.get("omnidit", {}).get("sampling")
    if own is not None:
        return PipelineConfig.from_dict(own)
    shift = 7.0
    sched = model_dir / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        shift = float(json.loads(sched.read_text()).get("shift", shift))
    mode = "embedded" if guidance_embeds else "cfg"
    return PipelineConfig(shift=shift, guidance_mode=mode, guidance=6.0 if guidance_embeds else 1.0,
                          height=720, width=1280, fps=24, max_height=1280, max_width=1280)


# ---- HunyuanVideo-1.5 -------------------------------------------------------------------------

HV15_ASPECT = (9, 16)  # (height, width) of a text-to-video request without a size
HV15_MAX_BUCKET_RATIO = 4.0


def bucket_sizes(target_size: int, multiple: int, max_ratio: float = HV15_MAX_BUCKET_RATIO) -> list[tuple[int, int]]:
    """HunyuanVideo-1.5's size buckets: (height, width) multiples of `multiple` with about
    (target_size / multiple)^2 patches, sides at most `max_ratio` apart, from tallest to widest."""
    n = round((target_size / multiple) ** 2)
    rows, cols, out = n, 1, []
    while rows > 0:  # walk the staircase rows * cols <= n from (n, 1) to (1, n)
        if max(rows, cols) / min(rows, cols) <= max_ratio:
            out.append((rows * multiple, cols * multiple))
        if (cols + 1) * rows <= n:
            cols += 1
        else:
            rows -= 1
    return out


def bucket_for(height: float, width: float, target_size: int, multiple: int) -> tuple[int, int]:
    """The bucket (height, width) closest in aspect to height:width, never more extreme than it
    (a portrait aspect takes a bucket at most as tall, a landscape one at most as wide)."""
    aspect = float(height) / float(width)
    best = None
    for i, (h, w) in enumerate(bucket_sizes(target_size, multiple)):
        ratio = round(h / w, 5)
        if (ratio <= aspect) if aspect >= 1 else (ratio >= aspect):
            key = (abs(ratio - aspect), i)
            if best is None or key < best[0]:
                best = (key, (h, w))
    if best is None:
        raise ValueError(f"no size bucket for aspect {height}:{width} at target size {target_size}")
    return best[1]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_hv15_pipeline_config(model_dir: Path) -> PipelineConfig:
    """Defaults of a diffusers HunyuanVideo-1.5 folder, each from the folder itself: the scheduler's
    shift, the guider's CFG scale (1 when it is disabled: the CFG-distilled variants), the size
    bucket of the transformer's `target_size` at 16:9, 50 steps and 121 frames at 24 fps."""
    model_dir = Path(model_dir)
    sched = _read_json(model_dir / "scheduler" / "scheduler_config.json")
    guider = _read_json(model_dir / "guider" / "guider_config.json")
    transformer = _read_json(model_dir / "transformer" / "config.json")
    vae = _read_json(model_dir / "vae" / "config.json")
    for key, plain in (("guidance_rescale", 0.0), ("use_original_formulation", False), ("start", 0.0),
                       ("stop", 1.0)):
        if guider.get(key, plain) != plain:
            raise ValueError(f"{model_dir}/guider: {key}={guider[key]!r} is not supported (only {plain!r})")
    scale = float(guider.get("guidance_scale", 1.0))
    if not guider.get("enabled", True) or math.isclose(scale, 1.0):
        scale = 1.0
    multiple = int(vae.get("spatial_compression_ratio", 16)) * int(transformer.get("patch_size", 1))
    target = int(transformer.get("target_size", 640))
    height, width = bucket_for(*HV15_ASPECT, target, multiple)
    top = max(max(hw) for hw in bucket_sizes(target, multiple))
    return PipelineConfig(steps=50, shift=float(sched.get("shift", 1.0)), guidance=scale, guidance_mode="cfg",
                          negative_prompt="", height=height, width=width, frames=121, fps=24, max_height=top,
                          max_width=top, max_frames=129, size_multiple=multiple)
