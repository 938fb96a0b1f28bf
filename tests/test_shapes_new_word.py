"""The shapes world's new word (spec.NEW_SHAPES: the cross) for LoRA training: drawn exactly, written
and read by the grammar, scored by the evaluator, and absent from the base model's scenes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_shapes_evaluate import _blur_noise

from omnidit.shapes import (
    NEW_SHAPES,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    evaluate_many,
    parse_prompt,
    prompt_for,
    random_batch,
    render,
    render_batch,
    sample_spec,
    score,
)
from omnidit.shapes.adherence import eval_prompts
from omnidit.shapes.evaluate import detect
from omnidit.shapes.spec import CROSS_ARM, FILL_RATIO, SIZE_EXTENT


def test_base_scenes_never_hold_the_new_word_and_word_scenes_always_do():
    rng = np.random.default_rng(0)
    base = [sample_spec(rng, video=bool(i % 2), max_objects=3) for i in range(400)]
    assert {o.shape for s in base for o in s.objects} == set(SHAPES)
    word = [sample_spec(rng, video=bool(i % 2), word="cross", max_objects=3) for i in range(200)]
    assert all(s.objects[0].shape == "cross" and all(o.shape in SHAPES for o in s.objects[1:]) for s in word)
    assert any(len(s.objects) > 1 for s in word)
    assert all(len(parse_prompt(p).objects) == 1 and "cross" in p
               for p in eval_prompts(20, seed=3, video=False, word="cross"))
    assert not any("cross" in p for p in eval_prompts(200, seed=3, video=False))
    with pytest.raises(ValueError, match="word must be one of"):
        sample_spec(rng, video=False, word="circle")


def test_cross_prompts_round_trip_with_paraphrases():
    rng = np.random.default_rng(1)
    for _ in range(100):
        spec = sample_spec(rng, video=True, word="cross")
        for text in (prompt_for(spec, paraphrase=False), prompt_for(spec, rng)):
            assert parse_prompt(text).semantics() == spec.semantics(), text
    assert parse_prompt("a big red plus on a gray background").objects[0].shape == "cross"
    _, frames, specs = random_batch(rng, 4, frames=1, size=32, word="cross")
    assert frames.shape == (4, 1, 32, 32, 3) and all(s.objects[0].shape == "cross" for s in specs)


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_cross_area_and_arms_are_exact(size):
    obj = ObjectSpec("cross", "white", size=size, center=(0.5, 0.5))
    img = render(SceneSpec("black", [obj]), size=128)[0, :, :, 0].astype(np.float64) / 255
    ext = SIZE_EXTENT[size] * 128
    assert img.sum() == pytest.approx(FILL_RATIO["cross"] * ext * ext, rel=0.01)
    assert FILL_RATIO["cross"] == pytest.approx(2 * CROSS_ARM - CROSS_ARM**2)
    corner = int(64 - ext / 2 + 1)  # inside the bounding box, outside both bars: background
    assert img[corner, corner] == 0 and img[64, corner] == 1 and img[corner, 64] == 1


def _scenes(n: int, *, video: bool, word: str | None, seed: int):
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, video=video, word=word) for _ in range(n)]
    return specs, render_batch(specs, frames=9 if video else 1)


def test_ground_truth_crosses_score_full_marks_also_blurred():
    for video in (False, True):
        specs, frames = _scenes(100, video=video, word="cross", seed=2)
        acc = evaluate_many(zip(frames, specs))
        assert all(v is None or v >= 0.99 for v in acc.values()), acc
        blurred = evaluate_many((_blur_noise(f, 1.0, 8.0, i), s) for i, (f, s) in enumerate(zip(frames, specs)))
        assert blurred["shape"] >= 0.95 and blurred["colour"] >= 0.95, blurred
    # a cross is not a circle, square or triangle, and those are not a cross
    rng = np.random.default_rng(4)
    specs = [sample_spec(rng, video=False, max_objects=1, word="cross") for _ in range(60)]
    frames = render_batch(specs)
    for other in SHAPES:
        wrong = [SceneSpec(s.background, [replace(s.objects[0], shape=other)]) for s in specs]
        assert evaluate_many(zip(frames, wrong))["shape"] <= 0.05


def test_old_shapes_are_never_read_as_the_new_word():
    """The evaluator's added class leaves the base shapes' ground truth as it was: every blob of a
    base scene, sharp, blurred or heavily blurred, keeps its own shape."""
    for video, seed in ((False, 5), (True, 6)):
        specs, frames = _scenes(100 if video else 150, video=video, word=None, seed=seed)
        for sigma, noise in ((0.0, 0.0), (1.0, 8.0), (2.0, 4.0)):
            seen = [f if sigma == 0 else _blur_noise(f, sigma, noise, i) for i, f in enumerate(frames)]
            assert not any(b.shape in NEW_SHAPES for f in seen for b in detect(f)[1])
            if sigma < 2:
                assert evaluate_many(zip(seen, specs))["shape"] >= 0.99
    one = SceneSpec("gray", [ObjectSpec("cross", "red", size="large", position="top left"),
                             ObjectSpec("circle", "blue", position="bottom right")])
    s = score(render(one), one)
    assert s["shape"] == 1 and s["all"] == 1
