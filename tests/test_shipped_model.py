"""The embedded models `shapes` and `shapes-turbo` (the default): ship inside the package, load
offline, and follow prompts.

The adherence floors here sit below the model cards' scores (which come from `omnidit eval` on
200 prompts) by enough to absorb the noise of 16 prompts; a broken model or VAE falls far below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnidit import Pipeline
from omnidit.model_folder import MODELS_DIR, default_model, shipped_models

SIZE_LIMIT = 150 * 2**20  # all of omnidit/models/


def test_shapes_is_shipped_and_small():
    assert {"shapes", "shapes-turbo"} <= set(shipped_models())
    assert default_model() == "shapes-turbo"
    total = sum(p.stat().st_size for p in MODELS_DIR.rglob("*") if p.is_file())
    assert total < SIZE_LIMIT, f"omnidit/models is {total / 2**20:.1f} MiB"
    for name in ("shapes", "shapes-turbo"):
        index = json.loads((MODELS_DIR / name / "model_index.json").read_text())
        assert index["text_encoder"]["path"].startswith("package:")  # no weights to download
    turbo = json.loads((MODELS_DIR / "shapes-turbo" / "model_index.json").read_text())["omnidit"]
    assert turbo["sampling"]["steps"] == 4 and turbo["sampling"]["guidance_mode"] == "none"
    assert turbo["distilled_from"] == "shapes" and turbo["method"] == "consistency"


@pytest.fixture(scope="module")
def shapes():
    return Pipeline.from_pretrained("shapes", device="cpu")


def test_generates_image_and_video(shapes):
    img = shapes.generate("a red circle at the top left on a black background", seed=0, steps=4)
    assert img.frames.shape == (1, 64, 64, 3) and img.frames.dtype == np.uint8
    vid = shapes.generate("a blue square on a white background, moving right", frames=17, seed=0, steps=4)
    assert vid.frames.shape == (17, 64, 64, 3)


@pytest.mark.parametrize("name", ["shapes", "shapes-turbo"])
def test_images_follow_the_prompt(name):
    from omnidit.shapes.adherence import eval_pipeline, eval_prompts

    pipe = Pipeline.from_pretrained(name, device="cpu")
    prompts = eval_prompts(16, seed=4242, video=False)
    result = eval_pipeline(pipe, prompts, steps=None if name == "shapes-turbo" else 10, seed=4242, batch_size=16)
    s = result["scores"]
    assert s["background"] >= 0.8 and s["colour"] >= 0.75 and s["position"] >= 0.7, result


def test_videos_move_the_way_the_prompt_says():
    """The default model's videos follow the motion words (release 1 moved objects where the seed
    sent them: about 1 in 5 right, as chance among six motions gives)."""
    from omnidit.shapes.adherence import eval_pipeline

    pipe = Pipeline.from_pretrained(default_model(), device="cpu")
    prompts = [f"a large {c} {s} on a {bg} background, moving {d}"
               for (c, s, bg) in (("red", "square", "black"), ("yellow", "circle", "gray"))
               for d in ("left", "right", "up", "down")]
    result = eval_pipeline(pipe, prompts, frames=17, seed=7, batch_size=8)
    assert result["scores"]["motion"] >= 0.6, result
