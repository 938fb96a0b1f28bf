"""Guidance helpers: true classifier-free guidance and HunyuanVideo's embedded guidance.

The guidance modes a model folder may name (`PipelineConfig.guidance_mode`):
- "cfg": true classifier-free guidance, cond + uncond branches, scale = the CFG scale;
- "embedded": one forward with the scale as the DiT's guidance input (guidance-distilled
  HunyuanVideo), optionally with true CFG on top when a negative prompt is given;
- "none": the conditional prediction alone (a CFG-distilled student).
`Denoiser.for_mode` (denoiser.py) is the one place that turns a mode into forwards.
"""

from __future__ import annotations

import math

import torch

GUIDANCE_MODES = ("embedded", "cfg", "none")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """True CFG: uncond + scale * (cond - uncond). scale = 1 returns cond's prediction.

    Written in the same order as diffusers' HunyuanVideoPipeline so results match bit for bit.
    """
    if cond.shape != uncond.shape:
        raise ValueError(f"cond and uncond must have the same shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    return uncond + scale * (cond - uncond)


def embedded_guidance(
    scale: float | torch.Tensor,
    batch: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Tensor[batch] fed to a guidance-distilled DiT: scale * 1000.

    The scale is first rounded to `dtype` and multiplied there, as diffusers does
    (`torch.tensor([g] * B, dtype=transformer_dtype) * 1000.0`), so bf16 values agree too.
    A Tensor[batch] of per-sample scales (distillation draws them) takes the same path.
    """
    if isinstance(scale, torch.Tensor):
        if scale.shape != (batch,):
            raise ValueError(f"a per-sample guidance scale must have shape ({batch},), got {tuple(scale.shape)}")
        return scale.to(device=device, dtype=dtype) * 1000.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0, got {scale!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    return torch.tensor([float(scale)] * batch, dtype=dtype, device=device) * 1000.0
