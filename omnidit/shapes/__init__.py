"""The shapes world: a procedural text-to-image/video domain the embedded model learns.

Prompts like "a large red circle at the top left on a gray background, moving right" map to
a SceneSpec (spec.py), are written and read by the grammar (grammar.py), rendered without
any model (render.py) and scored for prompt adherence (evaluate.py). world.py is the entry
that samples training scenes.
"""

from omnidit.shapes.evaluate import (
    ATTRIBUTES,
    detect,
    evaluate_many,
    score,
    score_prompt,
)
from omnidit.shapes.grammar import parse_prompt, prompt_for
from omnidit.shapes.render import render, render_batch
from omnidit.shapes.spec import (
    ALL_SHAPES,
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    NEW_SHAPES,
    POSITIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    SceneSpec,
)
from omnidit.shapes.world import random_batch, sample_spec

__all__ = [
    "ALL_SHAPES",
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLOURS",
    "MOTIONS",
    "NEW_SHAPES",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "ObjectSpec",
    "SceneSpec",
    "detect",
    "evaluate_many",
    "parse_prompt",
    "prompt_for",
    "random_batch",
    "render",
    "render_batch",
    "sample_spec",
    "score",
    "score_prompt",
]
