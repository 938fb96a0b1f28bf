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


def test_the_shipped_cross_adapter_draws_crosses_and_up_offers_it(shapes):
    """omnidit/models/loras/shapes-cross.safetensors (its card beside it) teaches `shapes` the word
    "cross": the base model draws none, the adapter some (its card: 38 % of 100 prompts at 30 steps; the
    floor allows for 16 prompts at 10 steps), and `omnidit up` serves it with the shipped models."""
    from omnidit.cli import build_parser
    from omnidit.cli.up import serve_args
    from omnidit.model_folder import SHIPPED_LORAS
    from omnidit.shapes.adherence import eval_pipeline, eval_prompts

    prompts = eval_prompts(16, seed=4242, video=False, word="cross")
    base = eval_pipeline(shapes, prompts, steps=10, seed=4242, batch_size=16)["scores"]
    name = shapes.load_lora(SHIPPED_LORAS / "shapes-cross.safetensors")
    try:
        adapted = eval_pipeline(shapes, prompts, steps=10, seed=4242, batch_size=16)["scores"]  # active at 1
    finally:
        shapes.dit.unload_lora(name)
    assert base["shape"] <= 0.07 and adapted["shape"] >= 0.12, (base, adapted)  # 0 and 3 of 16 here at 10 steps
    assert adapted["colour"] >= 0.75 and adapted["position"] >= 0.7, adapted  # the rest of the prompt still holds

    up = build_parser().parse_args
    assert serve_args(up(["up"]))[-2:] == ["--lora-dir", str(SHIPPED_LORAS)]
    assert "--lora-dir" not in serve_args(up(["up", "--model", "some/folder"]))  # not beside another model
    assert serve_args(up(["up", "--lora-dir", "mine"]))[-2:] == ["--lora-dir", "mine"]
