"""Batch lines with a start image (`"image"`: a path relative to the JSONL file, or absolute)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny_models import make_tiny_model_dir
from tolerances import assert_frames_close

from omnidit.batch.lines import BatchItem, parse_prompts
from omnidit.batch.worker import generate_chunk
from omnidit.generation import read_video


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    (root / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            root / "imgs" / name
        )
    (root / "bad.png").write_text("not an image")
    lines = [
        {
            "id": "rel",
            "prompt": "a red circle, moving right",
            "frames": 5,
            "image": "imgs/a.png",
            "seed": 1,
        },
        {
            "id": "abs",
            "prompt": "a blue square, moving up",
            "frames": 5,
            "image": str(root / "imgs" / "b.png"),
            "seed": 2,
        },
        {"id": "none", "prompt": "a green triangle", "frames": 5, "seed": 3},
        {"id": "missing", "prompt": "x", "frames": 5, "image": "imgs/nope.png"},
        {"id": "unreadable", "prompt": "x", "frames": 5, "image": "bad.png"},
        {"id": "still", "prompt": "x", "image": "imgs/a.png"},
        {"id": "notastring", "prompt": "x", "frames": 5, "image": 3},
    ]
    (root / "prompts.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def test_image_paths_resolve_against_the_jsonl_file_and_bad_ones_name_the_line(
    files, monkeypatch
):
    monkeypatch.chdir("/")  # relative to the file, not the working directory
    parsed = parse_prompts(files / "prompts.jsonl", temporal_ratio=4)
    items = {it.id: it for it in parsed.items}
    assert (
        items["rel"].image == str((files / "imgs" / "a.png").resolve())
        and items["none"].image is None
    )
    assert items["abs"].image_sha1 != items["rel"].image_sha1
    assert (
        items["rel"].params()["image"] == items["rel"].image
        and "image" not in items["none"].params()
    )
    errors = {e.id: e.message for e in parsed.errors}
    assert "line 4:" in errors["missing"] and "image path" in errors["missing"]
    assert (
        "line 5:" in errors["unreadable"]
        and "not a readable image" in errors["unreadable"]
    )
    assert (
        "frames > 1" in errors["still"]
        and "image must be a path" in errors["notastring"]
    )


def test_fingerprint_follows_the_image_bytes(files):
    item = parse_prompts(files / "prompts.jsonl", temporal_ratio=4).items[0]
    changed = BatchItem(**{**item.to_dict(), "image_sha1": "0" * 40})
    assert item.fingerprint("m") != changed.fingerprint(
        "m"
    )  # a rerun redoes a line whose image changed


def test_a_chunk_with_and_without_images_equals_each_alone(files, tmp_path):
    from omnidit import Pipeline

    pipe = Pipeline.from_pretrained(
        make_tiny_model_dir(tmp_path / "m", sampling={"steps": 2}), device="cpu"
    )
    items = parse_prompts(
        files / "prompts.jsonl", temporal_ratio=4
    ).items  # rel, abs, none: one chunk
    # Compare the frames before encoding: two H.264 encodes of frames one level apart can
    # differ by several levels, so decoded mp4s would test the codec, not the batch.
    frames = {}
    out = generate_chunk(pipe, items, finish=lambda gen, it: frames.__setitem__(it.id, gen.frames))
    for it, (result, data) in zip(items, out):
        assert result["status"] == "ok", result
        assert result["params"].get("image") == it.image
        (tmp_path / f"{it.id}.mp4").write_bytes(data)
        assert read_video(tmp_path / f"{it.id}.mp4").shape == frames[it.id].shape
        alone = pipe.generate(it.prompt, frames=5, seed=it.seed, image=it.image)
        assert_frames_close(frames[it.id], alone.frames)
