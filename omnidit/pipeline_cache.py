"""Step-cache calibration of a model (`omnidit calibrate-cache --model M`).

TeaCache and MagCache need per-model numbers (omnidit/dit/cache.py): run a few uncached
generations at the model's default settings, record per step block 0's modulated-input change,
the blocks' output change and the residual magnitude ratio, fit TeaCache's rescaling polynomial
and average MagCache's ratio curve, and write both to the model folder's `cache.json`, which
`Pipeline.from_pretrained` reads on every later load.
"""

from __future__ import annotations

import os
from pathlib import Path

from omnidit.dit.cache import Recorder, fit_calibration
from omnidit.model_folder import open_model, write_cache_calibration

# Varied subjects, colours and motion; any model's own prompts work as well.
CALIBRATION_PROMPTS = (
    "a red circle on a blue background",
    "a small green triangle moving left over grass",
    "two yellow squares and a purple star",
    "a white ball bouncing on black water",
    "a big orange box rotating under the sky",
    "a blue bird over a green field",
)


def calibrate(pipe, prompts=CALIBRATION_PROMPTS, *, steps: int | None = None, frames: int = 1,
              height: int | None = None, width: int | None = None, seed: int = 0) -> dict:
    """Run `pipe` uncached once per prompt (seed, seed + 1, ...) and fit the calibration (a dict)."""
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    recorder = Recorder()
    records = []
    for i, prompt in enumerate(prompts):
        pipe.generate_latents([prompt], seeds=[seed + i], steps=steps, frames=frames, height=height, width=width,
                              cache=recorder)
        records.append(recorder.records[-1])
    out = fit_calibration(records)
    out.update(prompts=len(prompts), frames=frames, model=pipe.name)
    return out


def calibrate_model(name_or_dir: str | os.PathLike | None, *, device=None, out: str | os.PathLike | None = None,
                    **kwargs) -> tuple[Path, dict]:
    """Calibrate a model folder and write `cache.json` into it (or into `out`) -> (path, calibration)."""
    from omnidit.pipeline import Pipeline

    folder = open_model(name_or_dir)
    pipe = Pipeline.from_pretrained(folder.path, device=device)
    calibration = calibrate(pipe, **kwargs)
    target = Path(out) if out is not None else folder.path
    target.mkdir(parents=True, exist_ok=True)
    return write_cache_calibration(target, calibration), calibration
