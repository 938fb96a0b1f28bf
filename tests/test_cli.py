"""`omnidit generate` as a user runs it: files written, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import make_tiny_model_dir

from omnidit.generation import read_video


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def run(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "omnidit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_generate_png_and_mp4(model, tmp_path):
    r = run("generate", "a red circle on a black background", "--model", str(model), "--out", str(tmp_path / "x.png"))
    assert r.returncode == 0, r.stderr
    img = read_video(tmp_path / "x.png")
    assert img.shape == (1, 32, 32, 3)
    r = run("generate", "a red circle on a black background, moving up", "--model", str(model), "--frames", "9",
            "--out", str(tmp_path / "x.mp4"), "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert read_video(tmp_path / "x.mp4").shape == (9, 32, 32, 3)
    assert "denoising" in r.stderr  # the progress bar


def test_same_seed_same_png(model, tmp_path):
    for name in ("a.png", "b.png"):
        r = run("generate", "a blue square on a white background", "--model", str(model), "--seed", "7",
                "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    assert np.array_equal(read_video(tmp_path / "a.png"), read_video(tmp_path / "b.png"))


@pytest.mark.parametrize("args,needle", [
    (["--frames", "4"], "frames"),
    (["--height", "33"], "height"),
    (["--steps", "0"], "--steps"),
    (["--frames", "9", "--out", "x.png"], "--frames"),
    (["--out", "x.bmp"], "--out"),
    (["--device", "tpu"], "--device"),
    (["--seed", "abc"], "--seed"),
    (["--attention-backend", "magic"], "attention"),
])
def test_bad_arguments_exit_2_in_one_line(model, tmp_path, args, needle):
    r = run("generate", "a red circle on a black background", "--model", str(model), *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0]
    assert not list(tmp_path.glob("*.png"))


def test_unknown_model_exit_2(tmp_path):
    r = run("generate", "a red circle", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing" in r.stderr
