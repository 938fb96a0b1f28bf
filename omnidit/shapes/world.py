"""The shapes world's public entry: random scenes, their prompts and frames.

`sample_spec` draws training scenes; `random_batch` turns them into (prompt, frames) pairs
rendered on the fly. The vocabulary and geometry are in spec.py, the grammar in grammar.py,
the rasteriser in render.py.
"""

from __future__ import annotations

import numpy as np

from omnidit.shapes.grammar import parse_prompt, prompt_for
from omnidit.shapes.render import render, render_batch
from omnidit.shapes.spec import (
    BACKGROUNDS,
    COLOURS,
    MAX_OBJECTS,
    MOTIONS,
    NEW_SHAPES,
    POSITION_JITTER,
    POSITIONS,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    any_overlap,
    random_free_center,
)

__all__ = [
    "ObjectSpec",
    "SceneSpec",
    "sample_spec",
    "prompt_for",
    "parse_prompt",
    "render",
    "render_batch",
    "random_batch",
]

# Sampling mix for training scenes.
P_ONE_OBJECT = 0.6
P_NAMED_POSITION = 0.7
P_SIZE_WORD = 0.5  # else "medium" (no size word)
P_MOTION = 0.85  # per object, videos only


def _sample_object(rng: np.random.Generator, background: str, taken: list[ObjectSpec], video: bool,
                   shape: str | None = None) -> ObjectSpec:
    used = {(o.colour, o.shape) for o in taken}
    forced = shape
    while True:
        colour = str(rng.choice([c for c in COLOURS if c != background]))
        shape = forced or str(rng.choice(SHAPES))
        if (colour, shape) not in used:
            break
    size = "medium" if rng.random() >= P_SIZE_WORD else str(rng.choice(["small", "large"]))
    free = [p for p in POSITIONS if p not in {o.position for o in taken}]
    if rng.random() < P_NAMED_POSITION:
        position = str(rng.choice(free))
        ax, ay = POSITIONS[position]
        jitter = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
        center = (float(ax + jitter[0]), float(ay + jitter[1]))
    else:
        position, center = None, random_free_center(rng)
    motion = str(rng.choice(MOTIONS)) if video and rng.random() < P_MOTION else None
    return ObjectSpec(shape=shape, colour=colour, size=size, position=position, center=center, motion=motion)


def sample_spec(rng: np.random.Generator, *, video: bool, max_objects: int = 2, word: str | None = None) -> SceneSpec:
    """A random training scene: ~60% one object, else 2..max_objects; objects never overlap
    (over the whole clip for videos); named centres are jittered by up to POSITION_JITTER.

    Shapes come from the base vocabulary `SHAPES`; `word` (one of `NEW_SHAPES`) makes the first
    object that shape, the others staying base shapes. None draws exactly what it always drew."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {max_objects}")
    if word is not None and word not in NEW_SHAPES:
        raise ValueError(f"word must be one of {list(NEW_SHAPES)} (a shape the base model was not trained on), "
                         f"got {word!r}")
    n = 1 if max_objects == 1 or rng.random() < P_ONE_OBJECT else int(rng.integers(2, max_objects + 1))
    background = str(rng.choice(list(BACKGROUNDS)))
    for _ in range(1000):
        objects: list[ObjectSpec] = []
        for _ in range(n):
            obj = _sample_object(rng, background, objects, video, word if not objects else None)
            if any_overlap([*objects, obj]):
                break
            objects.append(obj)
        if len(objects) == n:
            return SceneSpec(background, objects)
    raise RuntimeError(f"could not place {n} non-overlapping objects")  # not reached in practice


def random_batch(
    rng: np.random.Generator, n: int, *, frames: int, size: int, max_objects: int = 2, paraphrase: bool = True,
    word: str | None = None,
) -> tuple[list[str], np.ndarray, list[SceneSpec]]:
    """n random scenes: (prompts, uint8 [n, frames, size, size, 3], specs). Video scenes
    (with motion) when frames > 1; every scene holds `word` (see sample_spec) when given."""
    specs = [sample_spec(rng, video=frames > 1, max_objects=max_objects, word=word) for _ in range(n)]
    prompts = [prompt_for(s, rng, paraphrase=paraphrase) for s in specs]
    return prompts, render_batch(specs, frames=frames, size=size), specs


def mixed_batch(
    rng: np.random.Generator, n: int, *, frames: int, size: int, word: str | None, p_word: float,
) -> tuple[list[str], np.ndarray]:
    """n scenes, the first round(p_word * n) holding `word` (a new word) and the rest the base
    grammar's: (prompts, uint8 [n, frames, size, size, 3]). `word` None: all from the base grammar."""
    n_word = round(p_word * n) if word else 0
    parts = [random_batch(rng, k, frames=frames, size=size, word=w)
             for k, w in ((n_word, word), (n - n_word, None)) if k]
    return [p for part in parts for p in part[0]], np.concatenate([part[1] for part in parts])

