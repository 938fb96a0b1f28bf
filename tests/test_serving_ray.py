"""End to end on a real Ray Serve (CPU, tiny random model): one application for the module.

Covers both APIs over HTTP through Serve's proxy, batching, 429 backpressure,
cancellation, a generator replica killed mid-job, and a restart of the service.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

import numpy as np
from fake_api import free_port
from PIL import Image
from tolerances import assert_frames_close
from omnidit.serving import app as serving_app  # noqa: E402
from omnidit.serving.jobs import SQLiteJobStore  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PARAMS = {"width": 32, "height": 32, "frames": 5, "fps": 8, "steps": 3, "guidance": 3.0,
          "negative_prompt": None, "seed": 5}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    # The re-noising sampler (the shipped default's): its noise must not depend on the batch.
    model = make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny", sampling={"sampler": "x0_renoise"})
    settings = ServeSettings(
        model=str(model), data_dir=str(tmp_path_factory.mktemp("data")), api_key=KEY, device="cpu",
        max_pending_images=3, max_batch_size=8, batch_wait_s=0.2, max_steps=1000, lease_s=3.0, poll_s=0.1,
        health_check_period_s=2.0, sweep_s=2.0, max_attempts=3)
    port = free_port()
    try:
        url = serving_app.start(settings, port=port, num_cpus=2, log_to_driver=False)
        client = httpx.Client(base_url=url, headers=AUTH, timeout=120)
        yield SimpleNamespace(url=url, port=port, settings=settings, client=client)
        client.close()
    finally:
        serving_app.stop()


def _store(svc) -> SQLiteJobStore:
    return SQLiteJobStore(svc.settings.data_path / "jobs.db", retention_s=svc.settings.retention_s,
                          max_attempts=svc.settings.max_attempts)


def _wait(client, job_id, until=lambda j: j["status"] in ("completed", "failed", "cancelled"), timeout=90.0):
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        r = client.get(f"/v1/videos/{job_id}")
        if r.status_code == 200:
            job = r.json()
            if until(job):
                return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not get there in {timeout}s: {job}")


def _concurrently(fn, n):
    out = [None] * n

    def run(i):
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_images_over_http_are_batched(svc):
    batched = False
    for _ in range(3):  # concurrent requests of one size share a generate_many call (@serve.batch)
        before = _batch_summary(svc.client)
        rs = _concurrently(lambda i: svc.client.post("/v1/images/generations",
                                                     json={"prompt": f"shape {i}", "seed": i}), 3)
        assert [r.status_code for r in rs] == [200] * 3, [r.text for r in rs]
        assert all(r.json()["data"][0]["b64_json"] for r in rs)
        after = _batch_summary(svc.client)
        count, total = after[0] - before[0], after[1] - before[1]
        if total > count:  # mean images per generate_many call > 1
            batched = True
            break
    assert batched
    # Each batched image equals the same request served alone (seed i, prompt i).
    for i, r in enumerate(rs):
        alone = svc.client.post("/v1/images/generations", json={"prompt": f"shape {i}", "seed": i})
        assert_frames_close(_png(r.json()["data"][0]["b64_json"]), _png(alone.json()["data"][0]["b64_json"]))
    r = svc.client.post("/v1/images/generations", json={"prompt": "x", "n": 2, "response_format": "url"})
    url = r.json()["data"][1]["url"]
    assert url.startswith(svc.url) and svc.client.get(url).headers["content-type"] == "image/png"


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _batch_summary(client) -> tuple[float, float]:
    count = total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("omnidit_image_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("omnidit_image_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


def test_bad_input_through_the_proxy_is_4xx_json(svc):
    c = svc.client
    cases = [
        (c.post("/v1/images/generations", content=b"{oops", headers={"Content-Type": "application/json"}), 400),
        (c.post("/v1/images/generations", content=b"prompt=x", headers={"Content-Type": "text/plain"}), 415),
        (c.post("/v1/images/generations", json={"prompt": "x", "size": "100x100"}), 422),
        (c.post("/v1/videos", json={"prompt": "x", "frames": 6}), 422),
        (httpx.get(f"{svc.url}/v1/models"), 401),
        (c.get("/v1/videos/video_" + "a" * 32), 404),
    ]
    for r, status in cases:
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]


def test_video_job_with_idempotency(svc):
    c = svc.client
    body = {"prompt": "a yellow circle bouncing", "frames": 5, "seed": 2}
    first = c.post("/v1/videos", json=body, headers={"Idempotency-Key": "ray-1"})
    again = c.post("/v1/videos", json=body, headers={"Idempotency-Key": "ray-1"})
    assert first.status_code == 202 and again.status_code == 200 and first.json()["id"] == again.json()["id"]
    assert c.post("/v1/videos", json={**body, "frames": 9}, headers={"Idempotency-Key": "ray-1"}).status_code == 409
    job = _wait(c, first.json()["id"])
    assert job["status"] == "completed" and job["progress"] == 100
    content = c.get(f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4" and len(content.content) > 100


def test_cancel_stops_the_job_and_frees_the_replica(svc):
    c = svc.client
    long = c.post("/v1/videos", json={"prompt": "slow", "frames": 5, "steps": 1000}).json()
    _wait(c, long["id"], until=lambda j: j["status"] == "in_progress" and j["progress"] >= 1)
    assert c.post(f"/v1/videos/{long['id']}/cancel").json()["status"] == "cancelled"
    t0 = time.monotonic()
    short = c.post("/v1/videos", json={"prompt": "quick", "frames": 5, "steps": 3}).json()
    assert _wait(c, short["id"], timeout=60)["status"] == "completed"
    assert time.monotonic() - t0 < 60  # the 1000-step job would have held the replica for minutes
    assert c.get(f"/v1/videos/{long['id']}").json()["status"] == "cancelled"


def test_queue_full_is_429_with_retry_after(svc):
    rs = _concurrently(lambda i: svc.client.post("/v1/images/generations",
                                                 json={"prompt": f"busy {i}", "steps": 20}), 8)
    codes = sorted(r.status_code for r in rs)
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1, codes
    limited = next(r for r in rs if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


def test_killed_replica_mid_job_is_never_stuck(svc):
    c = svc.client
    job = c.post("/v1/videos", json={"prompt": "survivor", "frames": 5, "steps": 40}).json()
    _wait(c, job["id"], until=lambda j: j["status"] == "in_progress" and j["progress"] >= 1)
    store = _store(svc)
    owner = store.get(job["id"]).lease_owner
    store.close()
    os.kill(int(owner.split(":")[1]), signal.SIGKILL)  # the generator replica dies mid-job
    final = _wait(c, job["id"], timeout=180)
    assert final["status"] == "completed" and final["attempts"] >= 2 or \
        final["status"] == "failed" and final["error"]["code"] == "worker_lost", final
    if final["status"] == "completed":
        assert c.get(f"/v1/videos/{job['id']}/content").status_code == 200


def test_restart_keeps_finished_jobs_and_resumes_queued_ones(svc):
    from ray import serve

    c = svc.client
    done = _wait(c, c.post("/v1/videos", json={"prompt": "kept", "frames": 5}).json()["id"])
    assert done["status"] == "completed"
    serve.shutdown()  # the whole service goes away (Ray itself stays up to save time)
    store = _store(svc)
    queued, _ = store.create("accepted just before the crash", PARAMS)
    orphan, _ = store.create("running when the service died", PARAMS)
    store.claim("dead-host:1:gone", lease_s=0.5)  # claims `queued` (oldest) ...
    store.claim("dead-host:1:gone", lease_s=0.5)  # ... and `orphan`; neither lease will be renewed
    store.release(queued.id, "dead-host:1:gone")  # one back in the queue, one left with a dying lease
    store.close()
    serving_app.start(svc.settings, port=svc.port, log_to_driver=False)
    assert c.get(f"/v1/videos/{done['id']}").json()["status"] == "completed"
    assert c.get(f"/v1/videos/{done['id']}/content").status_code == 200
    for job_id in (queued.id, orphan.id):
        final = _wait(c, job_id, timeout=120)
        assert final["status"] == "completed", final
    assert _wait(c, orphan.id)["attempts"] == 2
