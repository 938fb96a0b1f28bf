"""Prompt adherence of a Pipeline on the shapes world: generate from seeded prompts, score the pixels.

Used by `omnidit eval`, by training's periodic evaluation and by distillation's comparisons.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

VIDEO_FRAMES = 17


def eval_prompts(n: int, *, seed: int, video: bool, exclude: set[str] | frozenset = frozenset(),
                 word: str | None = None) -> list[str]:
    """`n` canonical prompts from a seeded generator, skipping any in `exclude` (e.g. training prompts).
    `word` (one of spec.NEW_SHAPES): single-object scenes of that shape, so a set's shape score is
    the new word's adherence alone; None: the base grammar's scenes, as always."""
    from omnidit.shapes import prompt_for, sample_spec

    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        spec = sample_spec(rng, video=video, max_objects=1, word=word) if word else sample_spec(rng, video=video)
        p = prompt_for(spec, paraphrase=False)
        if p not in exclude:
            out.append(p)
    return out


def eval_sets(n: int, videos: int, seed: int, word: str | None = None) -> list[tuple[str, list[str], int]]:
    """`omnidit eval`'s prompt sets: ("images", `n` prompts from `seed`, 1 frame) and ("videos",
    `videos` prompts from `seed + 1`, VIDEO_FRAMES); a set with no prompts is left out. `word`: see
    eval_prompts."""
    sets = [("images", n, 1, seed), ("videos", videos, VIDEO_FRAMES, seed + 1)]
    return [(kind, eval_prompts(count, seed=s, video=frames > 1, word=word), frames)
            for kind, count, frames, s in sets if count > 0]


def eval_pipeline(pipe, prompts: list[str], *, frames: int = 1, steps: int | None = None,
                  guidance: float | None = None, seed: int = 0, height: int = 64, width: int = 64,
                  batch_size: int = 8, keep_frames: bool = False, cache=None) -> dict:
    """Per-attribute accuracy over `prompts`; sample i uses seed `seed + i` whatever the batching.
    `cache`: generate's step-cache SPEC; with a policy running, `fraction_computed` is the share
    of sample-steps whose blocks ran."""
    from omnidit.shapes import parse_prompt, score

    totals: dict[str, list[float]] = defaultdict(list)
    kept = []
    computed = total = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        gens = pipe.generate_many(batch, seeds=[seed + start + i for i in range(len(batch))], frames=frames,
                                  height=height, width=width, steps=steps, guidance=guidance, cache=cache)
        for p, g in zip(batch, gens):
            total += g.info.get("steps", 0)
            computed += g.info.get("steps_computed", g.info.get("steps", 0))
            for k, v in score(g.frames, parse_prompt(p)).items():
                if v is not None:
                    totals[k].append(float(v))
            if keep_frames:
                kept.append(g.frames)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = {
        "scores": {k: round(float(np.mean(v)), 4) for k, v in sorted(totals.items())},
        "n": len(prompts),
        "frames": frames,
        "seconds_per_sample": round(seconds / max(1, len(prompts)), 4),
        # this process's CPU time (all its threads): steadier than wall time on a shared machine
        "cpu_seconds_per_sample": round(cpu / max(1, len(prompts)), 4),
        "fraction_computed": round(computed / max(1, total), 4),
    }
    if keep_frames:
        result["frames_list"] = kept
    return result
