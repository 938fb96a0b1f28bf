"""`omnidit generate PROMPT --image START.png --frames N` as a user runs it (in process: exit codes, one line)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import make_tiny_model_dir

from omnidit.cli import main
from omnidit.generation import read_video

PROMPT = "a red circle on a black background, moving right"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), sampling={"steps": 2})


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    from omnidit.shapes import parse_prompt, render

    path = tmp_path_factory.mktemp("img") / "start.png"
    Image.fromarray(render(parse_prompt(PROMPT), size=48)[0]).save(
        path
    )  # fitted to 32x32 by the pipeline
    return path


def test_generate_with_an_image_is_the_pipelines_image_to_video(
    model, start, tmp_path, capsys
):
    from omnidit import Pipeline

    out = tmp_path / "x.mp4"
    assert (
        main(
            [
                "generate",
                PROMPT,
                "--model",
                str(model),
                "--image",
                str(start),
                "--frames",
                "5",
                "--seed",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    ), capsys.readouterr().err
    want = Pipeline.from_pretrained(str(model), device="cpu").generate(
        PROMPT, frames=5, seed=3, image=start
    )
    want.save(tmp_path / "want.mp4")
    assert np.array_equal(read_video(out), read_video(tmp_path / "want.mp4"))


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "--image path"),
        ("unreadable", "is not a readable image"),
        ("one frame", "frames > 1"),
    ],
)
def test_bad_image_exits_2_naming_the_flag(
    model, start, tmp_path, capsys, case, needle
):
    path = {
        "missing": tmp_path / "nope.png",
        "unreadable": tmp_path / "bad.png",
        "one frame": start,
    }[case]
    if case == "unreadable":
        path.write_text("not a png")
    frames = "1" if case == "one frame" else "5"
    out = tmp_path / ("x.png" if frames == "1" else "x.mp4")
    assert (
        main(
            [
                "generate",
                PROMPT,
                "--model",
                str(model),
                "--image",
                str(path),
                "--frames",
                frames,
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if "Loading weights" not in ln]
    assert len(err) == 1 and "--image" in err[0] and needle in err[0], err
    assert not out.exists()


def test_a_model_without_image_input_refuses_it(start, tmp_path, capsys):
    from tiny_hunyuan15_pipeline import make_tiny_hv15_pipeline_dir

    t2v = make_tiny_hv15_pipeline_dir(tmp_path / "hv15_t2v", task="t2v")
    out = tmp_path / "x.mp4"
    assert (
        main(
            [
                "generate",
                "x",
                "--model",
                str(t2v),
                "--image",
                str(start),
                "--frames",
                "5",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--image" in err and "takes no image" in err and "Traceback" not in err
    assert not out.exists()
