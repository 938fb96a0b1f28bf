"""The HTTP API in-process (FastAPI TestClient over the tiny model, no Ray): shapes, errors, jobs, privacy."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from omnidit.serving.api import MAX_BODY_BYTES, create_app  # noqa: E402
from omnidit.serving.engine import GeneratorEngine  # noqa: E402
from omnidit.serving.errors import ApiError  # noqa: E402
from omnidit.serving.schemas import ImageRequest, ModelInfo, VideoRequest, frames_for_seconds  # noqa: E402
from omnidit.serving.service import LocalGeneratorClient, Service  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def env(model_dir, tmp_path_factory):
    settings = ServeSettings(model=str(model_dir), data_dir=str(tmp_path_factory.mktemp("data")), api_key=KEY,
                             device="cpu", max_images=4, max_steps=500, poll_s=0.05, lease_s=10)
    engine = GeneratorEngine(settings)
    service = Service(settings, LocalGeneratorClient(engine), start_sweeper=False)
    with TestClient(create_app(service)) as client:
        yield client, service, engine
    engine.close()
    service.close()


def _wait(client, job_id, statuses=("completed", "failed", "cancelled"), timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/videos/{job_id}", headers=AUTH).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


# -- images -------------------------------------------------------------------------------------

def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_images_b64_default_size_and_seeds(env):
    client, *_ = env
    r = client.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2, "seed": 11}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["created"], int) and [d["seed"] for d in body["data"]] == [11, 12]
    pngs = [base64.b64decode(d["b64_json"]) for d in body["data"]]
    assert all(_png_size(p) == (32, 32) for p in pngs)  # the model's default size
    assert pngs[0] != pngs[1]
    again = client.post("/v1/images/generations", json={"prompt": "a red circle", "seed": 11}, headers=AUTH)
    # Same seed, same image: alone vs in a batch of 2 agree up to float rounding (1/255).
    alone = _pixels(base64.b64decode(again.json()["data"][0]["b64_json"]))
    assert np.abs(alone.astype(int) - _pixels(pngs[0]).astype(int)).max() <= 1


def test_images_url_served_by_id_only(env):
    client, service, _ = env
    r = client.post("/v1/images/generations", json={"prompt": "a square", "size": "48x32", "response_format": "url"},
                    headers=AUTH)
    url = r.json()["data"][0]["url"]
    assert url.startswith("http://testserver/v1/images/files/img_")
    got = client.get(url, headers=AUTH)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png" and _png_size(got.content) == (48, 32)
    assert client.get(url).status_code == 401
    for bad in ("..%2Fjobs.db", "img_" + "0" * 32, "jobs.db"):
        r = client.get(f"/v1/images/files/{bad}", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_auth(env):
    client, *_ = env
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}):
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert client.get("/health").status_code == 200  # probes and scrapers need no key
    assert client.get("/metrics").status_code == 200


BIG = "x" * 2001
IMG, VID = "/v1/images/generations", "/v1/videos"
BAD = [
    # (method, path, json body or (raw bytes, content type), status, param)
    ("POST", IMG, {"prompt": "x", "size": "32"}, 422, "size"),
    ("POST", IMG, {"prompt": "x", "size": "33x32"}, 422, "size"),
    ("POST", IMG, {"prompt": "x", "size": "128x32"}, 422, "size"),
    ("POST", IMG, {"prompt": "x", "size": "0x0"}, 422, "size"),
    ("POST", IMG, {"prompt": "x", "n": 9}, 422, "n"),
    ("POST", IMG, {"prompt": "x", "n": 5}, 422, "n"),  # over this service's --max-images (4)
    ("POST", IMG, {"prompt": "x", "n": "2"}, 422, "n"),
    ("POST", IMG, {"prompt": "x", "n": True}, 422, "n"),
    ("POST", IMG, {"prompt": "x", "steps": 0}, 422, "steps"),
    ("POST", IMG, {"prompt": "x", "steps": 501}, 422, "steps"),  # over --max-steps
    ("POST", IMG, {"prompt": ""}, 422, "prompt"),
    ("POST", IMG, {"prompt": "   "}, 422, "prompt"),
    ("POST", IMG, {"prompt": BIG}, 422, "prompt"),
    ("POST", IMG, {"prompt": 5}, 422, "prompt"),
    ("POST", IMG, {}, 422, "prompt"),
    ("POST", IMG, {"prompt": "x", "guidance": "high"}, 422, "guidance"),
    ("POST", IMG, {"prompt": "x", "guidance": 31}, 422, "guidance"),
    ("POST", IMG, {"prompt": "x", "seed": -1}, 422, "seed"),
    ("POST", IMG, {"prompt": "x", "response_format": "jpeg"}, 422, "response_format"),
    ("POST", IMG, {"prompt": "x", "quality": "ultra"}, 422, "quality"),
    ("POST", IMG, {"prompt": "x", "output_format": "gif"}, 422, "output_format"),
    ("POST", IMG, {"prompt": "x", "output_format": "bmp"}, 422, "output_format"),
    ("POST", IMG, {"prompt": "x", "output_compression": 101}, 422, "output_compression"),
    ("POST", IMG, {"prompt": "x", "background": "transparent"}, 422, "background"),
    ("POST", IMG, {"prompt": "x", "frame_count": 4}, 422, "frame_count"),
    ("POST", IMG, {"prompt": "x", "svg": {}}, 422, "svg"),
    ("POST", IMG, {"prompt": "x", "stream": True, "n": 2}, 422, "n"),
    ("POST", IMG, {"prompt": "x", "stream": True, "partial_images": 4}, 422, "partial_images"),
    ("POST", IMG, {"prompt": "x", "size": "1024x1024"}, 422, "size"),
    ("POST", IMG, {"prompt": "x", "unknown": 1}, 422, "unknown"),
    ("POST", IMG, {"prompt": "x", "model": "dall-e-3"}, 404, "model"),
    ("POST", IMG, (b"{not json", "application/json"), 400, None),
    ("POST", IMG, (b"[1, 2]", "application/json"), 400, None),
    ("POST", IMG, (b"", "application/json"), 400, None),
    ("POST", IMG, (b"prompt=x", "application/x-www-form-urlencoded"), 415, None),
    ("POST", IMG, (b'{"prompt": "x"}', "text/plain"), 415, None),
    ("POST", VID, {"prompt": "x", "frames": 6}, 422, "frames"),
    ("POST", VID, {"prompt": "x", "frames": 21}, 422, "frames"),
    ("POST", VID, {"prompt": "x", "seconds": 10}, 422, "seconds"),
    ("POST", VID, {"prompt": "x", "seconds": 0}, 422, "seconds"),
    ("POST", VID, {"prompt": "x", "frames": 5, "seconds": 1}, 422, "seconds"),
    ("POST", VID, {"prompt": "x", "fps": 0}, 422, "fps"),
    ("POST", VID, {"prompt": "x", "size": "64x80"}, 422, "size"),
    ("POST", VID, {"prompt": "x", "size": "720x1280"}, 422, "size"),  # the official client's default
    ("POST", VID, {"prompt": "x", "seconds": "four"}, 422, "seconds"),
    ("POST", VID, {"prompt": "x", "seconds": "12"}, 422, "seconds"),
    ("POST", VID, {"prompt": "x", "input_reference": {"image_url": "https://x/y.png"}}, 422, "input_reference"),
    ("POST", VID, (b"prompt=x&frames=6", "application/x-www-form-urlencoded"), 422, "frames"),
    ("POST", VID, (b'{"prompt": "x"}', "text/plain"), 415, None),
    ("GET", VID + "/video_" + "0" * 32 + "/content?variant=spritesheet", None, 422, "variant"),
    ("POST", VID + "/video_" + "0" * 32 + "/cancel", None, 404, "video_id"),
    ("GET", VID + "?limit=0", None, 422, "limit"),
    ("GET", VID + "?order=sideways", None, 422, "order"),
    ("GET", VID + "?after=..%2Fjobs.db", None, 422, "after"),
    ("GET", VID + "/video_" + "0" * 32, None, 404, "video_id"),
    ("GET", VID + "/..%2F..%2Fjobs.db", None, 404, None),  # %2F decodes to "/": no route matches
    ("GET", VID + "/video_" + "0" * 32 + "/content", None, 404, "video_id"),
    ("DELETE", VID + "/not-an-id", None, 404, "video_id"),
    ("DELETE", "/v1/models", None, 405, None),
    ("GET", "/v1/nothing-here", None, 404, None),
]


@pytest.mark.parametrize("method,path,body,status,param", BAD, ids=[f"{b[0]} {b[1][:24]} {b[3]}" for b in BAD])
def test_bad_input_is_a_clear_4xx(env, method, path, body, status, param):
    client, *_ = env
    kw = {}
    if isinstance(body, tuple):
        kw["content"], ctype = body
        kw["headers"] = {**AUTH, "Content-Type": ctype}
    else:
        kw["headers"] = AUTH
        if body is not None:
            kw["json"] = body
    r = client.request(method, path, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param


def test_body_too_large_and_idempotency_key_too_long(env):
    client, *_ = env
    r = client.post(IMG, content=b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}',
                    headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = client.post(VID, json={"prompt": "x"}, headers={**AUTH, "Idempotency-Key": "k" * 256})
    assert r.status_code == 422 and r.json()["error"]["param"] == "Idempotency-Key"


# -- videos -------------------------------------------------------------------------------------

def test_video_job_end_to_end(env):
    from omnidit.generation import read_video

    client, service, _ = env
    r = client.post(VID, json={"prompt": "a blue square moving right", "frames": 5, "size": "32x48", "seed": 3},
                    headers=AUTH)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0 and job["object"] == "video"
    assert r.headers["location"] == f"/v1/videos/{job['id']}"
    assert job["expires_at"] > job["created_at"] and job["size"] == "32x48" and job["frames"] == 5
    done = _wait(client, job["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["attempts"] == 1, done
    content = client.get(f"/v1/videos/{job['id']}/content", headers=AUTH)
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    path = service.outputs.video_path(job["id"])
    assert path.read_bytes() == content.content
    assert read_video(path).shape == (5, 48, 32, 3)
    listed = client.get(VID, headers=AUTH).json()
    assert job["id"] in [j["id"] for j in listed["data"]] and listed["object"] == "list"
    gone = client.delete(f"/v1/videos/{job['id']}", headers=AUTH)
    assert gone.json() == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert not path.exists()  # DELETE removes the file
    assert client.get(f"/v1/videos/{job['id']}", headers=AUTH).status_code == 404


def test_seconds_become_valid_frame_counts(env):
    client, *_ = env
    assert frames_for_seconds(1.0, 8, 4) == 9 and frames_for_seconds(0.5, 8, 4) == 5
    assert frames_for_seconds(0.01, 8, 4) == 5 and frames_for_seconds(4.0, 24, 4) == 97
    r = client.post(VID, json={"prompt": "x", "seconds": 1.0, "fps": 8}, headers=AUTH)
    assert r.status_code == 202 and r.json()["frames"] == 9 and r.json()["seconds"] == 1.125
    _wait(client, r.json()["id"])


def test_idempotency_key_over_http(env):
    client, *_ = env
    body = {"prompt": "a green triangle", "frames": 5, "seed": 1}
    a = client.post(VID, json=body, headers={**AUTH, "Idempotency-Key": "order-42"})
    b = client.post(VID, json=body, headers={**AUTH, "Idempotency-Key": "order-42"})
    assert a.status_code == 202 and b.status_code == 200 and a.json()["id"] == b.json()["id"]
    c = client.post(VID, json={**body, "seed": 2}, headers={**AUTH, "Idempotency-Key": "order-42"})
    assert c.status_code == 409 and c.json()["error"]["param"] == "Idempotency-Key"
    _wait(client, a.json()["id"])


def test_cancel_running_job_frees_the_worker(env):
    client, _, engine = env
    job = client.post(VID, json={"prompt": "slow", "frames": 5, "steps": 500}, headers=AUTH).json()
    running = _wait(client, job["id"], statuses=("in_progress",))
    deadline = time.monotonic() + 30
    while client.get(f"/v1/videos/{job['id']}", headers=AUTH).json()["progress"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert running["status"] == "in_progress"
    r = client.get(f"/v1/videos/{job['id']}/content", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready"
    cancelled = client.post(f"/v1/videos/{job['id']}/cancel", headers=AUTH).json()
    assert cancelled["status"] == "cancelled" and cancelled["progress"] < 100
    t0 = time.monotonic()
    while engine.runner.current is not None:  # stops within one step (~0.2 s here), not after 500
        assert time.monotonic() - t0 < 5, "the worker did not stop"
        time.sleep(0.02)
    # Cancel keeps the record (reachable, cancelled, no poll hint); DELETE removes it: 404 afterwards.
    kept = client.get(f"/v1/videos/{job['id']}", headers=AUTH)
    assert kept.json()["status"] == "cancelled" and "openai-poll-after-ms" not in kept.headers
    assert client.post(f"/v1/videos/{job['id']}/cancel", headers=AUTH).json()["status"] == "cancelled"
    assert client.delete(f"/v1/videos/{job['id']}", headers=AUTH).json() == {
        "id": job["id"], "object": "video.deleted", "deleted": True}
    assert client.get(f"/v1/videos/{job['id']}", headers=AUTH).status_code == 404
    assert client.delete(f"/v1/videos/{job['id']}", headers=AUTH).status_code == 404


def test_delete_running_job_stops_it_and_is_404_after(env):
    client, _, engine = env
    job = client.post(VID, json={"prompt": "slow", "frames": 5, "steps": 500}, headers=AUTH).json()
    _wait(client, job["id"], statuses=("in_progress",))
    r = client.delete(f"/v1/videos/{job['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"id": job["id"], "object": "video.deleted", "deleted": True}
    t0 = time.monotonic()
    while engine.runner.current is not None:  # its next heartbeat finds no row
        assert time.monotonic() - t0 < 5, "the worker did not stop"
        time.sleep(0.02)
    assert client.get(f"/v1/videos/{job['id']}", headers=AUTH).status_code == 404
    r = client.post(f"/v1/videos/{job['id']}/cancel", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["param"] == "video_id"


def test_models_metrics_docs(env):
    client, *_ = env
    models = client.get("/v1/models", headers=AUTH).json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["defaults"]["size"] == "32x32"
    assert client.get("/v1/models/tiny", headers=AUTH).status_code == 200
    assert client.get("/v1/models/other", headers=AUTH).status_code == 404
    text = client.get("/metrics").text
    for name in ("omnidit_http_requests_total{", "omnidit_image_queue_depth ", "omnidit_video_queue_depth ",
                 'omnidit_video_jobs{status="completed"}', 'omnidit_step_seconds_count{kind="image"}',
                 'omnidit_step_seconds_count{kind="video"}', "# TYPE omnidit_step_seconds summary"):
        assert name in text, name
    assert 'route="/v1/videos/{video_id}"' in text  # route templates, never ids
    spec = client.get("/openapi.json").json()
    assert {"/v1/images/generations", "/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content",
            "/v1/models", "/health", "/metrics"} <= set(spec["paths"])
    assert "ImageRequest" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_logs_carry_no_prompt_text(env, caplog):
    client, service, _ = env
    secret = "my secret prompt about zebras"
    with caplog.at_level(logging.INFO, logger="omnidit"):
        client.post(IMG, json={"prompt": secret}, headers=AUTH)
        job = client.post(VID, json={"prompt": secret, "frames": 5}, headers=AUTH).json()
        _wait(client, job["id"])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert job["id"] in text and "zebras" not in text
    service.settings.log_prompts = True
    try:
        with caplog.at_level(logging.INFO, logger="omnidit"):
            client.post(IMG, json={"prompt": secret}, headers=AUTH)
        assert "zebras" in "\n".join(r.getMessage() for r in caplog.records)
    finally:
        service.settings.log_prompts = False


def test_retention_deletes_jobs_and_files(env):
    client, service, _ = env
    job = client.post(VID, json={"prompt": "x", "frames": 5}, headers=AUTH).json()
    _wait(client, job["id"])
    path = service.outputs.video_path(job["id"])
    assert path.exists()
    assert service.sweep()["expired"] == 0  # not yet
    swept = service.sweep(now=time.time() + service.settings.retention_s + 5)
    assert swept["expired"] >= 1 and not path.exists()
    assert client.get(f"/v1/videos/{job['id']}", headers=AUTH).status_code == 404


# -- backpressure (service level, deterministic) ----------------------------------------------------

class _BlockedGenerator:
    """Holds every image request until released."""

    def __init__(self):
        self.release = asyncio.Event()
        self.info_ = ModelInfo(id="fake", name="fake", width=32, height=32, max_width=64, max_height=64,
                               max_frames=17, size_multiple=16, fps=8, steps=3, guidance=3.0, temporal_ratio=4)

    async def info(self):
        return self.info_.to_dict()

    async def health(self):
        return {}

    async def images(self, payload):
        await self.release.wait()
        return {"images": [b"png"] * payload["n"], "seeds": [0] * payload["n"], "steps": 3, "denoise_s": 0.1,
                "batch": 1}


def test_image_queue_full_is_429_with_retry_after(tmp_path):
    async def scenario():
        gen = _BlockedGenerator()
        svc = Service(ServeSettings(data_dir=str(tmp_path), max_pending_images=2), gen, start_sweeper=False)
        admitted = [asyncio.create_task(svc.generate_images(ImageRequest(prompt=p), "http://x/")) for p in "ab"]
        await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as e:
            await svc.generate_images(ImageRequest(prompt="c"), "http://x/")
        assert e.value.status == 429 and int(e.value.headers["Retry-After"]) >= 1
        gen.release.set()
        results = [await t for t in admitted]
        assert [len(r["data"]) for r in results] == [1, 1]
        assert len((await svc.generate_images(ImageRequest(prompt="d"), "http://x/"))["data"]) == 1  # room again
        assert "omnidit_rejected_total{reason=\"image_queue_full\"} 1" in svc.render_metrics()
        svc.close()

    asyncio.run(scenario())


def test_video_queue_full_is_429(tmp_path):
    async def scenario():
        svc = Service(ServeSettings(data_dir=str(tmp_path), max_queued_jobs=2), _BlockedGenerator(),
                      start_sweeper=False)
        for _ in range(2):
            await svc.create_video(VideoRequest(prompt="x"), None)
        with pytest.raises(ApiError) as e:
            await svc.create_video(VideoRequest(prompt="x"), None)
        assert e.value.status == 429 and e.value.headers["Retry-After"]
        svc.close()

    asyncio.run(scenario())


# -- deployment config ----------------------------------------------------------------------------

def test_serve_config_yaml_builds(model_dir, tmp_path):
    yaml = pytest.importorskip("yaml")
    from ray.serve.schema import ServeDeploySchema

    from omnidit.serving import app as serving_app

    config = yaml.safe_load((Path(serving_app.__file__).parent / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") else \
        ServeDeploySchema.parse_obj(config)
    spec = config["applications"][0]
    assert spec["import_path"] == "omnidit.serving.app:build"
    args = dict(spec["args"], model=str(model_dir), data_dir=str(tmp_path))
    application = serving_app.build(args)
    assert type(application).__name__ == "Application"


def test_multi_gpu_replica_design():
    from omnidit.serving.generator import check_supported, generator_options

    s = ServeSettings(gpus_per_replica=4, cpus_per_replica=2, ulysses_degree=2, ring_degree=2)
    check_supported(s)  # a parallel replica holds its workers' GPUs itself (tests/test_serving_parallel.py)
    assert generator_options(s)["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 4}
    with pytest.raises(ValueError, match="sequence-parallel worker group"):
        check_supported(ServeSettings(gpus_per_replica=4))
    assert generator_options(ServeSettings(gpus_per_replica=1))["ray_actor_options"]["num_gpus"] == 1
