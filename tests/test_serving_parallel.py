"""A parallel generator replica without Ray: the engine over a 2-process Ulysses WorkerGroup (gloo, CPU)
gives the single-process engine's images, and runs video jobs with progress and a one-step cancel."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from tiny_models import make_tiny_model_dir

from omnidit.serving.engine import GeneratorEngine, model_info
from omnidit.serving.generator import check_supported, generator_options
from omnidit.serving.schemas import VideoRequest, resolve_video
from omnidit.serving.settings import ServeSettings

PROMPT = "a red circle on a black background"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny model (2 heads) with larger DiT weights, so an image depends strongly on attention
    (a rank seeing half the tokens would move pixels by far more than 1/255)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny", weight_std=0.2)


def _settings(model, data, **kw) -> ServeSettings:
    return ServeSettings(model=str(model), data_dir=str(data), device="cpu", poll_s=0.05, lease_s=10,
                         max_steps=1000, **kw)


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _wait(store, job_id, done, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not done(job := store.get(job_id)):
        assert time.monotonic() < deadline, f"job {job_id} stuck at {job.status} {job.progress}%"
        time.sleep(0.05)
    return job


def test_parallel_engine_matches_single_process_and_runs_jobs(model, tmp_path):
    payload = {"prompt": PROMPT, "n": 2, "width": 32, "height": 48, "steps": 3, "guidance": 3.0,
               "negative_prompt": None, "seed": 7}
    single = GeneratorEngine(_settings(model, tmp_path / "a"), run_jobs=False)
    try:
        want = single.run_images([payload])[0]
    finally:
        single.close()
    assert model_info(str(model)) == single.info  # what a parallel replica reports, without loading weights

    engine = GeneratorEngine(_settings(model, tmp_path / "b", ulysses_degree=2), run_jobs=True)
    try:
        assert engine.parallel and engine.info == single.info
        assert engine.health()["workers"] == 2
        got = engine.run_images([payload])[0]
        assert got["seeds"] == want["seeds"] == [7, 8] and got["batch"] == 2
        for a, b in zip(got["images"], want["images"]):
            assert _pixels(a).shape == (48, 32, 3)
            assert np.abs(_pixels(a) - _pixels(b)).max() <= 1
        assert np.abs(_pixels(got["images"][0]) - _pixels(got["images"][1])).max() > 10  # two seeds differ
        bad = engine.run_images([dict(payload, height=40)])[0]  # a worker's ValueError, mapped as before
        assert bad["error"]["status"] == 422 and bad["error"]["param"] == "size"

        store, info = engine.runner.store, engine.info
        params = resolve_video(VideoRequest(prompt="slow", frames=5, size="32x48", steps=1000, seed=1), info,
                               max_steps=1000)
        slow, _ = store.create("slow", params)
        _wait(store, slow.id, lambda j: j.progress >= 1)  # rank 0's per-step progress reaches the store
        store.cancel(slow.id)
        t0 = time.monotonic()
        while engine.runner.current is not None:  # every rank stops within a step, not after 1000
            assert time.monotonic() - t0 < 5, "the worker group did not stop"
            time.sleep(0.02)
        assert store.get(slow.id).status == "cancelled" and store.get(slow.id).progress < 50

        params = resolve_video(VideoRequest(prompt=PROMPT, frames=5, size="32x48", steps=3, seed=2), info,
                               max_steps=1000)
        job, _ = store.create(PROMPT, params)  # the group is usable after the cancel
        done = _wait(store, job.id, lambda j: j.terminal)
        assert done.status == "completed" and done.progress == 100, done
        from omnidit.generation import read_video

        assert read_video(engine.runner.outputs.video_path(job.id)).shape == (5, 48, 32, 3)
        again = engine.run_images([payload])[0]
        assert again["images"] == got["images"]
    finally:
        engine.close()
    assert all(not p.is_alive() for p in engine.pipe._procs) and engine.pipe._procs == []


def test_parallel_replica_settings():
    four = ServeSettings(ulysses_degree=2, cfg_parallel=True, gpus_per_replica=4, cpus_per_replica=2)
    assert four.workers_per_replica == 4
    check_supported(four)
    assert generator_options(four)["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 4}
    check_supported(ServeSettings(ring_degree=2, gpus_per_replica=0, device="cpu"))  # K gloo processes on CPU
    assert generator_options(ServeSettings(gpus_per_replica=1))["ray_actor_options"]["num_gpus"] == 1
    with pytest.raises(ValueError, match="gpus_per_replica must be 0 .* or 4"):
        check_supported(ServeSettings(ulysses_degree=4, gpus_per_replica=2))
    with pytest.raises(ValueError, match="sequence-parallel worker group"):
        check_supported(ServeSettings(gpus_per_replica=2))
    with pytest.raises(ValueError, match="device must be cuda"):
        check_supported(ServeSettings(ring_degree=2, gpus_per_replica=2, device="cuda:1"))
    with pytest.raises(ValueError, match="ulysses_degree must be an integer >= 1"):
        ServeSettings(ulysses_degree=0)
