"""The embedded `shapes` model: ships inside the package, loads offline, and follows prompts.

The adherence floor here is the part of the model card's scores that a regression would
break first (the background colour); the full numbers come from `omnidit eval`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnidit import Pipeline
from omnidit.pipeline import MODELS_DIR, default_model, shipped_models

SIZE_LIMIT = 150 * 2**20  # all of omnidit/models/


def test_shapes_is_shipped_and_small():
    assert "shapes" in shipped_models()
    assert default_model() in shipped_models()
    total = sum(p.stat().st_size for p in MODELS_DIR.rglob("*") if p.is_file())
    assert total < SIZE_LIMIT, f"omnidit/models is {total / 2**20:.1f} MiB"
    index = json.loads((MODELS_DIR / "shapes" / "model_index.json").read_text())
    assert index["text_encoder"]["path"].startswith("package:")  # no weights to download


@pytest.fixture(scope="module")
def shapes():
    return Pipeline.from_pretrained("shapes", device="cpu")


def test_generates_image_and_video(shapes):
    img = shapes.generate("a red circle at the top left on a black background", seed=0, steps=4)
    assert img.frames.shape == (1, 64, 64, 3) and img.frames.dtype == np.uint8
    vid = shapes.generate("a blue square on a white background, moving right", frames=17, seed=0, steps=4)
    assert vid.frames.shape == (17, 64, 64, 3)


def test_background_follows_the_prompt(shapes):
    from omnidit.shapes.adherence import eval_pipeline, eval_prompts

    prompts = eval_prompts(12, seed=4242, video=False)
    result = eval_pipeline(shapes, prompts, steps=10, seed=4242, batch_size=12)
    assert result["scores"]["background"] >= 0.9, result
