"""Several models in one service (issue 21, part 4), in-process: routing by `model`, 404 model_not_found,
/v1/models, video jobs recorded with their model and run by that model's worker (also after a restart),
the OpenAPI `model` enum, and the settings and CLI that declare them. Live Ray Serve: test_serving_models_live.py;
the store's claim by model on SQLite and PostgreSQL: test_serving_store.py."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from omnidit.serving.api import create_app  # noqa: E402
from omnidit.serving.engine import GeneratorEngine  # noqa: E402
from omnidit.serving.jobs import SQLiteJobStore  # noqa: E402
from omnidit.serving.service import LocalGeneratorClient, Service  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

IMG, VID = "/v1/images/generations", "/v1/videos"
# The second model is told apart by its card: another default size and larger limits.
B_SAMPLING = {"width": 48, "height": 32, "max_width": 96, "max_height": 64, "max_frames": 9}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return make_tiny_model_dir(root / "tiny-a"), make_tiny_model_dir(root / "tiny-b", seed=1, sampling=B_SAMPLING)


def _engines(settings: ServeSettings, **kw) -> list[GeneratorEngine]:
    return [GeneratorEngine(settings.for_model(m), default_model=i == 0, **kw) for i, m in enumerate(settings.models)]


@pytest.fixture(scope="module")
def env(models, tmp_path_factory):
    settings = ServeSettings(model=[str(m) for m in models], data_dir=str(tmp_path_factory.mktemp("data")),
                             device="cpu", poll_s=0.05, lease_s=10)
    engines = _engines(settings)
    service = Service(settings, [LocalGeneratorClient(e) for e in engines], start_sweeper=False)
    with TestClient(create_app(service)) as client:
        yield client, service, engines
    for e in engines:
        e.close()
    service.close()


def _size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def _wait(client, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{VID}/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_models_lists_every_served_model_with_its_limits(env):
    client, *_ = env
    cards = client.get("/v1/models").json()["data"]
    assert [c["id"] for c in cards] == ["tiny-a", "tiny-b"]  # the default first
    assert cards[0]["defaults"]["size"] == "32x32" and cards[0]["limits"]["max_size"] == "64x64"
    assert cards[1]["defaults"]["size"] == "48x32" and cards[1]["limits"]["max_size"] == "96x64"
    assert cards[1]["limits"]["max_frames"] == 9 and cards[0]["limits"]["max_frames"] == 17
    assert client.get("/v1/models/tiny-b").json()["id"] == "tiny-b"
    health = client.get("/health").json()
    assert health["models"] == ["tiny-a", "tiny-b"] and len(health["generators"]) == 2


def test_model_routes_images_and_missing_model_means_the_first(env):
    client, *_ = env
    first = client.post(IMG, json={"prompt": "a red circle", "seed": 1}).json()
    assert _size(first["data"][0]["b64_json"]) == (32, 32) and first["size"] == "32x32"
    second = client.post(IMG, json={"prompt": "a red circle", "seed": 1, "model": "tiny-b"}).json()
    assert _size(second["data"][0]["b64_json"]) == (48, 32)
    wide = client.post(IMG, json={"prompt": "x", "size": "96x32", "model": "tiny-b"})
    assert wide.status_code == 200 and _size(wide.json()["data"][0]["b64_json"]) == (96, 32)
    r = client.post(IMG, json={"prompt": "x", "size": "96x32"})  # beyond the first model's 64x64
    err = r.json()["error"]
    assert r.status_code == 422 and err["param"] == "size" and "up to 64x64" in err["message"]
    # streaming goes to the named model too
    r = client.post(IMG, json={"prompt": "x", "model": "tiny-b", "stream": True, "partial_images": 1, "seed": 2})
    last = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")][-1]
    assert last["type"] == "image_generation.completed" and last["size"] == "48x32"


def test_unknown_model_is_404_naming_the_served_ones(env):
    client, *_ = env
    for method, path, body in (("POST", IMG, {"prompt": "x", "model": "dall-e-3"}),
                               ("POST", VID, {"prompt": "x", "model": "dall-e-3"}),
                               ("GET", "/v1/models/dall-e-3", None)):
        r = client.request(method, path, json=body)
        err = r.json()["error"]
        assert r.status_code == 404 and err["code"] == "model_not_found" and err["param"] == "model", r.text
        assert err["type"] == "invalid_request_error"
        assert err["message"] == "model 'dall-e-3' is not served here; this service serves 'tiny-a', 'tiny-b'"


def test_video_job_records_its_model_and_runs_on_that_models_worker(env):
    client, service, (engine_a, engine_b) = env
    ran = {"a": [], "b": []}
    for key, engine in (("a", engine_a), ("b", engine_b)):  # which worker ran which job
        engine.runner.generate = lambda job, cb, e=engine, k=key: (ran[k].append(job.id), e.run_video(job, cb))[1]
    try:
        b = client.post(VID, json={"prompt": "a blue square moving right", "frames": 5, "model": "tiny-b"}).json()
        a = client.post(VID, json={"prompt": "a blue square moving right", "frames": 5}).json()
        assert b["model"] == "tiny-b" and b["size"] == "48x32" and a["model"] == "tiny-a" and a["size"] == "32x32"
        assert _wait(client, b["id"])["status"] == "completed" and _wait(client, a["id"])["status"] == "completed"
    finally:
        engine_a.runner.generate, engine_b.runner.generate = engine_a.run_video, engine_b.run_video
    assert ran == {"a": [a["id"]], "b": [b["id"]]}
    assert service.store.get(b["id"]).model == "tiny-b"
    listed = {j["id"]: j["model"] for j in client.get(VID).json()["data"]}
    assert listed[a["id"]] == "tiny-a" and listed[b["id"]] == "tiny-b"
    content = client.get(f"{VID}/{b['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"


def test_openapi_model_enum_lists_the_served_models(env):
    client, *_ = env
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("ImageRequest", "VideoRequest"):
        prop = schemas[name]["properties"]["model"]
        branch = next(b for b in prop["anyOf"] if b.get("type") == "string")
        assert branch["enum"] == ["tiny-a", "tiny-b"] and "default (absent): tiny-a" in prop["description"]
    size = next(b for b in schemas["ImageRequest"]["properties"]["size"]["anyOf"] if b.get("type") == "string")
    assert "96x64" in size["enum"] and "64x64" in size["enum"]  # the union of both models' sizes


def test_queued_jobs_after_a_restart_go_to_their_models_worker(models, tmp_path, monkeypatch):
    """Jobs queued while no worker ran (a restart) are each claimed by their own model's worker; a row from
    before several models (no model) goes to the first; a job of a model no longer served fails, not waits."""
    settings = ServeSettings(model=[str(m) for m in models], data_dir=str(tmp_path), device="cpu", poll_s=0.05,
                             lease_s=10)
    store = SQLiteJobStore(tmp_path / "jobs.db", retention_s=3600)
    params = {"width": 32, "height": 32, "frames": 5, "fps": 8, "steps": 2, "guidance": 3.0,
              "negative_prompt": None, "seed": 1}
    jobs = {m: store.create("a red circle", params, model=m)[0].id for m in ("tiny-b", "tiny-a", None, "gone")}
    ran, run_video = {}, GeneratorEngine.run_video
    monkeypatch.setattr(GeneratorEngine, "run_video",  # which engine ran which job (workers start at once)
                        lambda self, job, cb: (ran.setdefault(job.id, self.info.id), run_video(self, job, cb))[1])
    engines = _engines(settings)
    service = Service(settings, [LocalGeneratorClient(e) for e in engines], start_sweeper=False)
    try:
        with TestClient(create_app(service)) as client:
            client.get("/v1/models")  # the ingress learns the served models
            assert service.sweep()["unserved"] == 1
            for m in ("tiny-b", "tiny-a", None):
                assert _wait(client, jobs[m])["status"] == "completed"
            gone = client.get(f"{VID}/{jobs['gone']}").json()
            assert gone["status"] == "failed" and gone["error"]["code"] == "model_not_found"
            assert "tiny-a, tiny-b" in gone["error"]["message"]
        assert ran == {jobs["tiny-b"]: "tiny-b", jobs["tiny-a"]: "tiny-a", jobs[None]: "tiny-a"}
    finally:
        for e in engines:
            e.close()
        service.close()
        store.close()


def test_settings_and_cli_declare_several_models(models, tmp_path):
    from omnidit.cli import build_parser
    from omnidit.cli.serve import settings as cli_settings
    from omnidit.serving.generator import deployment_name

    s = ServeSettings(model=[str(models[0]), str(models[1])])
    assert s.models == [str(models[0]), str(models[1])] and s.for_model(s.models[1]).model == str(models[1])
    assert ServeSettings(model=["shapes"]).model == "shapes" and ServeSettings().models == [None]
    assert ServeSettings.from_dict({"model": ["shapes-turbo", "shapes"]}).models == ["shapes-turbo", "shapes"]
    with pytest.raises(ValueError, match=r"each served model needs its own name, got \['tiny-a'\]"):
        ServeSettings(model=[str(models[0]), str(models[0])])
    with pytest.raises(ValueError, match="non-empty list"):
        ServeSettings(model=[])
    assert [deployment_name(i, m) for i, m in enumerate(s.models)] == ["Generator", "Generator-2-tiny-b"]
    args = build_parser("serve").parse_args(["serve", "--model", str(models[0]), "--model", str(models[1]),
                                             "--port", "18998", "--data-dir", str(tmp_path)])
    assert cli_settings(args).models == [str(models[0]), str(models[1])]
