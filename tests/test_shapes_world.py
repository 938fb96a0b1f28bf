"""The shapes world: scene specs, the prompt grammar (both directions) and the renderer."""

from __future__ import annotations

import numpy as np
import pytest

from omnidit.shapes import (
    BACKGROUNDS,
    COLOURS,
    ObjectSpec,
    SceneSpec,
    parse_prompt,
    prompt_for,
    random_batch,
    render,
    render_batch,
    sample_spec,
)
from omnidit.shapes.spec import FILL_RATIO, MOTION_TRAVEL, POSITION_JITTER, POSITIONS, SIZE_EXTENT, any_overlap


def _specs(n: int, seed: int = 0) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, video=i % 2 == 0, max_objects=3 if i % 7 == 0 else 2) for i in range(n)]


# --- grammar --------------------------------------------------------------------------------
def test_round_trip_paraphrased_and_canonical():
    rng = np.random.default_rng(1)
    for spec in _specs(2000):
        for text in (prompt_for(spec, rng), prompt_for(spec, paraphrase=False)):
            assert parse_prompt(text).semantics() == spec.semantics(), text


def test_canonical_is_deterministic_and_paraphrases_vary():
    spec = SceneSpec("gray", [ObjectSpec("circle", "red", "large", "top left", motion="left")])
    canonical = "a large red circle at the top left on a gray background, moving left"
    assert prompt_for(spec, paraphrase=False) == canonical
    assert prompt_for(spec, np.random.default_rng(3), paraphrase=False) == canonical
    variants = {prompt_for(spec, np.random.default_rng(s)) for s in range(200)}
    assert len(variants) > 100
    words = " ".join(variants).lower()
    for synonym in ("grey", "big", "ball", "upper left", "to the left", "backdrop", "one ", "the large"):
        assert synonym in words, synonym
    two = SceneSpec(
        "white",
        [ObjectSpec("circle", "red", position="left"), ObjectSpec("square", "orange", "small", "right", motion="growing")],
    )
    assert prompt_for(two, paraphrase=False) == (
        "a red circle on the left and a small orange square on the right growing on a white background"
    )


@pytest.mark.parametrize(
    "text, background, objects",
    [
        ("a red circle at the top left on a black background", "black", [("circle", "red", "medium", "top left", None)]),
        ("a large blue square in the center on a white background", "white", [("square", "blue", "large", "center", None)]),
        ("a small green triangle on the right on a gray background, moving up", "gray",
         [("triangle", "green", "small", "right", "up")]),
        ("On a grey background, a big red ball at the upper left.", "gray", [("circle", "red", "large", "top left", None)]),
        ("A tiny yellow box in the middle. The background is black.", "black",
         [("square", "yellow", "small", "center", None)]),
        ("a cyan square getting smaller on a black background", "black", [("square", "cyan", "medium", None, "shrinking")]),
        ("at the bottom right, an orange disc falling on a white backdrop", "white",
         [("circle", "orange", "medium", "bottom right", "down")]),
        ("a purple triangle at the bottom moving to the left and an orange circle at the top right growing "
         "on a white background", "white",
         [("triangle", "purple", "medium", "bottom", "left"), ("circle", "orange", "medium", "top right", "growing")]),
    ],
)  # fmt: skip
def test_examples_parse(text, background, objects):
    spec = parse_prompt(text)
    assert spec.background == background
    assert [o.semantics() for o in spec.objects] == objects
    for o in spec.objects:
        if o.position:
            assert o.center == POSITIONS[o.position]  # parsed scenes sit exactly on the anchor


def test_unnamed_objects_get_distinct_deterministic_places():
    text = "a red circle and a blue square on a gray background"
    a, b = parse_prompt(text), parse_prompt(text)
    assert [o.center for o in a.objects] == [o.center for o in b.objects]
    assert a.objects[0].center != a.objects[1].center and not any_overlap(a.objects)
    c = parse_prompt(text, rng=np.random.default_rng(7))
    assert [o.center for o in c.objects] != [o.center for o in a.objects]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a red hexagon on a black background", "hexagon"),
        ("two red circles on a black background", "two"),
        ("a black circle on a black background", "black"),
        ("a white circle on a white background", "background"),
        ("a red circle at the top left and a blue square at the top left on a gray background", "top left"),
        ("a red circle and a red circle on a gray background", "differ"),
        ("a red circle", "background"),
        ("a red circle on a red background", "red"),
        ("a red circle moving on a gray background", "moving"),
        ("a red on a gray background", "shape"),
        ("a circle on a gray background", "colour"),
        ("on a gray background", "object"),
    ],
)
def test_bad_prompts_raise_naming_the_problem(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_prompt(text)


def test_unknown_word_error_lists_vocabulary():
    with pytest.raises(ValueError) as err:
        parse_prompt("a red star on a black background")
    assert "'star'" in str(err.value) and "triangle" in str(err.value) and "cyan" in str(err.value)


def test_spec_validation_names_fields():
    for kwargs, field in [({"shape": "star"}, "shape"), ({"colour": "pink"}, "colour"), ({"size": "huge"}, "size"),
                          ({"position": "far left"}, "position"), ({"motion": "spinning"}, "motion")]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            ObjectSpec(**{"shape": "circle", "colour": "red", "position": "center", **kwargs})
    with pytest.raises(ValueError, match="center"):
        ObjectSpec("circle", "red")
    with pytest.raises(ValueError, match="background"):
        SceneSpec("pink", [ObjectSpec("circle", "red", position="center")])
    spec = SceneSpec("gray", [ObjectSpec("circle", "red", center=(0.3, 0.4), motion="up")])
    assert SceneSpec.from_dict(spec.to_dict()) == spec


# --- sampling -------------------------------------------------------------------------------
def test_sampled_scenes_obey_the_rules_and_the_mix():
    rng = np.random.default_rng(2)
    images = [sample_spec(rng, video=False) for _ in range(1500)]
    videos = [sample_spec(rng, video=True) for _ in range(1500)]
    objs = [o for s in images + videos for o in s.objects]
    for s in images + videos:
        assert all(o.colour != s.background for o in s.objects)
        assert not any_overlap(s.objects)
        for o in s.objects:
            if o.position:  # jittered around the anchor, never further than POSITION_JITTER
                assert np.abs(np.subtract(o.center, POSITIONS[o.position])).max() <= POSITION_JITTER + 1e-9
    assert 0.55 < np.mean([len(s.objects) == 1 for s in images]) < 0.65
    assert 0.62 < np.mean([o.position is not None for o in objs]) < 0.75  # a bit under 0.7: overlaps rejected
    assert 0.45 < np.mean([o.size != "medium" for o in objs]) < 0.55
    assert all(o.motion is None for s in images for o in s.objects)
    assert 0.8 < np.mean([o.motion is not None for s in videos for o in s.objects]) < 0.9
    assert {o.colour for o in objs} == set(COLOURS) and {s.background for s in images} == set(BACKGROUNDS)


def test_random_batch_matches_its_prompts():
    prompts, video, specs = random_batch(np.random.default_rng(4), 6, frames=5, size=32)
    assert video.shape == (6, 5, 32, 32, 3) and video.dtype == np.uint8
    for p, s, v in zip(prompts, specs, video):
        assert parse_prompt(p).semantics() == s.semantics()
        np.testing.assert_array_equal(v, render(s, frames=5, size=32))


# --- rendering ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_rendered_area_and_position_are_exact(shape, size):
    spec = SceneSpec("black", [ObjectSpec(shape, "white", "large", center=(0.4, 0.55))])
    img = render(spec, size=size)[0, :, :, 0].astype(np.float64) / 255  # coverage
    area = img.sum() / size**2
    assert area == pytest.approx(FILL_RATIO[shape] * SIZE_EXTENT["large"] ** 2, rel=0.02)
    assert 0 < np.mean((img > 0.02) & (img < 0.98)) < 0.05  # anti-aliased edges, thin
    cols, rows = np.nonzero(img.sum(0) > 0.5)[0], np.nonzero(img.sum(1) > 0.5)[0]
    assert (cols[0] + cols[-1] + 1) / 2 / size == pytest.approx(0.4, abs=1.0 / size)  # bbox centre
    assert (rows[0] + rows[-1] + 1) / 2 / size == pytest.approx(0.55, abs=1.0 / size)
    if shape == "triangle":  # apex up: the top row of the shape is narrower than the bottom one
        assert img[rows[1]].sum() < img[rows[-2]].sum() / 4


def test_motion_follows_the_time_convention():
    def centroid_and_area(frame):
        m = frame[..., 0].astype(np.float64) / 255
        ys, xs = np.mgrid[: m.shape[0], : m.shape[1]]
        return (xs * m).sum() / m.sum() / m.shape[1], (ys * m).sum() / m.sum() / m.shape[0], m.sum()

    base = ObjectSpec("square", "white", center=(0.5, 0.5))
    still = render(SceneSpec("black", [base]), size=64)[0]
    for motion, (ux, uy) in [("right", (1, 0)), ("up", (0, -1))]:
        clip = render(SceneSpec("black", [ObjectSpec("square", "white", center=(0.5, 0.5), motion=motion)]), 9, 64)
        (x0, y0, _), (x8, y8, _) = centroid_and_area(clip[0]), centroid_and_area(clip[-1])
        assert (x8 - x0, y8 - y0) == pytest.approx((ux * MOTION_TRAVEL, uy * MOTION_TRAVEL), abs=0.01)
        np.testing.assert_array_equal(clip[4], still)  # mid-clip = the named place
        image = render(SceneSpec("black", [ObjectSpec("square", "white", center=(0.5, 0.5), motion=motion)]))
        np.testing.assert_array_equal(image[0], still)  # an image is mid-clip
    grow = render(SceneSpec("black", [ObjectSpec("square", "white", center=(0.5, 0.5), motion="growing")]), 9, 64)
    areas = [centroid_and_area(f)[2] for f in grow]
    assert np.all(np.diff(areas) > 0) and areas[-1] / areas[0] == pytest.approx((1.4 / 0.6) ** 2, rel=0.05)


def test_render_batch_colours_clipping_and_painter_order():
    edge = SceneSpec("gray", [ObjectSpec("circle", "red", "large", "left", motion="left")])  # leaves the frame
    top = SceneSpec("white", [ObjectSpec("square", "blue", "large", center=(0.5, 0.5)),
                              ObjectSpec("circle", "yellow", "small", center=(0.5, 0.5))])  # fmt: skip
    batch = render_batch([edge, top], frames=3, size=64)
    assert batch.shape == (2, 3, 64, 64, 3)
    np.testing.assert_array_equal(batch[0], render(edge, 3, 64))
    assert tuple(batch[0, 0, 0, -1]) == BACKGROUNDS["gray"] and tuple(batch[0, -1, 32, 0]) == COLOURS["red"]
    assert tuple(batch[1, 0, 32, 32]) == COLOURS["yellow"]  # later objects paint over earlier ones
    assert tuple(batch[1, 0, 32, 23]) == COLOURS["blue"] and tuple(batch[1, 0, 0, 0]) == BACKGROUNDS["white"]
    with pytest.raises(ValueError, match="frames"):
        render(edge, frames=0)
