"""`omnidit eval --i2v`: image-to-video scored on the shapes world (omnidit/shapes/i2v_eval.py)."""

from __future__ import annotations

import pytest
from tiny_models import make_tiny_model_dir

from omnidit.cli import main


@pytest.fixture(scope="module")
def pipe():
    from omnidit import Pipeline

    return Pipeline.from_pretrained(
        "shapes-turbo", device="cpu"
    )  # a trained VAE: PSNR has a meaning


def test_image_to_video_keeps_the_first_frame_and_text_to_video_does_not(pipe):
    from omnidit.shapes.adherence import eval_prompts
    from omnidit.shapes.i2v_eval import ATTRS, eval_i2v

    r = eval_i2v(
        pipe,
        eval_prompts(2, seed=5, video=True),
        frames=9,
        size=64,
        seed=1,
        batch_size=2,
    )
    assert r["n"] == 2 and set(r) >= {"i2v", "t2v"}
    i2v, t2v = r["i2v"], r["t2v"]
    assert i2v["first_frame_psnr_min"] >= 25.0 > t2v["first_frame_psnr_vs_round_trip"]
    assert (
        i2v["junction_psnr"] > t2v["junction_psnr"]
    )  # the video leaves from the image
    for m in (i2v, t2v):
        assert set(ATTRS) - {"position"} <= set(m) and all(
            0 <= m[a] <= 1 for a in ATTRS if a in m
        )


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--teacher", "shapes"], "separate comparisons"),
        (["--n", "0"], "--n"),
        (["--prompts", "{prompts}"], "--prompts/--word"),
    ],
)
def test_bad_i2v_flags_exit_2(extra, needle, capsys, tmp_path):
    model = make_tiny_model_dir(tmp_path / "m")
    (tmp_path / "p.txt").write_text("a red circle on a black background\n")
    extra = [e.format(prompts=tmp_path / "p.txt") for e in extra]
    assert main(["eval", "--model", str(model), "--i2v", *extra]) == 2
    assert needle in capsys.readouterr().err
