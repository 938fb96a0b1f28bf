"""What a model folder says about how to sample from it: defaults and limits, in one place.

A diffusers HunyuanVideo folder carries no such section, so its values come from the
published recipe (50 steps, embedded guidance 6.0, shift from its scheduler config).
omnidit's own model folders write an `"omnidit"` section in `model_index.json`.
"""

from __future__ import annotations

import json
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
