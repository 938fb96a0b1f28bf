"""End to end: `torchrun ... omnidit generate --ulysses-degree/--ring-degree` and the WorkerGroup API
write the same image as one process (tiny model: 2 heads, CFG on through its empty negative prompt)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from fake_api import free_port
from tiny_models import make_tiny_model_dir

from omnidit.generation import read_video

PROMPT = "a red circle on a black background"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny model with larger DiT weights (std 0.2, not 0.05), so the image depends strongly on
    attention: seeing half the video keys, or no text keys, moves pixels by ~100/255 instead of ~2."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), weight_std=0.2)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """What `omnidit generate PROMPT --model M --seed 0` writes, made in this (single) process."""
    from omnidit.pipeline import Pipeline

    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Pipeline.from_pretrained(model, device="cpu").generate(PROMPT, seed=0).save(path)
    return read_video(path)


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "omnidit", "generate", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240)


@pytest.mark.parametrize("flags", [["--ulysses-degree", "2"], ["--ring-degree", "2"]], ids=["ulysses2", "ring2"])
def test_torchrun_generate_equals_single_process(model, reference, tmp_path, flags):
    out = tmp_path / "x.png"
    r = torchrun(2, PROMPT, "--model", str(model), "--device", "cpu", "--out", str(out), *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines() == [str(out)]  # rank 0 alone writes and reports the output
    degrees = "ulysses 2 x ring 1" if "--ulysses-degree" in flags else "ulysses 1 x ring 2"
    assert f"parallel: {degrees} x cfg 1 = 2 processes (gloo)" in r.stderr
    got = read_video(out)
    assert got.shape == reference.shape
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 1


def test_parallel_flags_without_torchrun_exit_2(model, tmp_path, capsys, monkeypatch):
    from omnidit.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = main(["generate", PROMPT, "--model", str(model), "--ring-degree", "2", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "torchrun --nproc-per-node 2" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_worker_group_cfg_parallel(model, reference):
    from omnidit.parallel import ParallelConfig
    from omnidit.serving.worker_group import WorkerGroup
    from omnidit.sampling import Cancelled

    with WorkerGroup(str(model), ParallelConfig(cfg_degree=2), device="cpu", collective_timeout_s=60) as group:
        steps = []
        gen = group.generate(PROMPT, seed=0, callback=lambda i, n, x: steps.append((i, n)))
        assert np.abs(gen.frames.astype(int) - reference.astype(int)).max() <= 1
        assert steps == [(1, 3), (2, 3), (3, 3)]
        with pytest.raises(ValueError, match="height"):
            group.generate(PROMPT, height=33)

        def stop(i, n, x):
            raise Cancelled()

        with pytest.raises(Cancelled):  # every rank stops at the same step, the group stays usable
            group.generate(PROMPT, seed=1, callback=stop)
        again = group.generate(PROMPT, seed=0)
        assert np.array_equal(again.frames, gen.frames)


def test_torchrun_generate_hunyuanvideo15_i2v_equals_single_process(tmp_path):
    """A HunyuanVideo-1.5 image-to-video folder under `torchrun ... --ulysses-degree 2 --image`: the glyph
    tokens, the SigLIP image tokens and the start image's condition latent reach every rank, and rank 0
    writes the single-process video."""
    from PIL import Image
    from tiny_hunyuan15_pipeline import make_tiny_hv15_pipeline_dir

    from omnidit.pipeline import Pipeline

    folder = make_tiny_hv15_pipeline_dir(tmp_path / "hv15", task="i2v")
    start = tmp_path / "start.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(start)
    prompt = 'a sign that says "open"'
    args = ["--frames", "5", "--steps", "2", "--height", "32", "--width", "48", "--seed", "0"]
    ref = tmp_path / "ref.mp4"
    Pipeline.from_pretrained(folder, device="cpu").generate(
        prompt, frames=5, steps=2, height=32, width=48, seed=0, image=start).save(ref)
    out = tmp_path / "x.mp4"
    r = torchrun(2, prompt, "--model", str(folder), "--device", "cpu", "--image", str(start), "--out", str(out),
                 "--ulysses-degree", "2", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = read_video(out), read_video(ref)
    assert got.shape == want.shape == (5, 32, 48, 3) and want.std() > 5
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
