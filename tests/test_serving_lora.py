"""LoRA adapters in the service (in-process, no Ray): `--lora-dir`, the `lora` request field, per-request
switching with no reload, batches never mixing adapter sets, /v1/models listing the adapters."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_lora_runtime import adapter  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

from omnidit.dit import DiT, lora  # noqa: E402
from omnidit.serving.api import create_app  # noqa: E402
from omnidit.serving.engine import GeneratorEngine  # noqa: E402
from omnidit.serving.schemas import ImageRequest, resolve_image  # noqa: E402
from omnidit.serving.service import LocalGeneratorClient, Service  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402

IMG = {"prompt": "a red circle", "seed": 5, "steps": 3}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-service")
    model = make_tiny_model_dir(root / "tiny")
    dit = DiT.from_pretrained(model / "transformer")
    (root / "loras").mkdir()
    for i, name in enumerate(["ink", "neon", "wood"]):
        save_file(adapter(dit, 20 + i), root / "loras" / f"{name}.safetensors")
    settings = ServeSettings(model=str(model), data_dir=str(root / "data"), device="cpu", poll_s=0.05, lease_s=10,
                             lora_dir=str(root / "loras"), max_loras=2)
    engine = GeneratorEngine(settings)
    service = Service(settings, LocalGeneratorClient(engine), start_sweeper=False)
    with TestClient(create_app(service)) as client:
        yield client, service, engine
    engine.close()
    service.close()


def _image(client, **extra) -> np.ndarray:
    from PIL import Image

    r = client.post("/v1/images/generations", json={**IMG, **extra})
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_switch_adapters_per_request_without_reloading(env):
    client, _, engine = env
    st = lora.state(engine.pipe.dit)
    base = _image(client)
    ink = _image(client, lora={"ink": 1.0})
    neon = _image(client, lora={"neon": 1.0})
    both = _image(client, lora={"ink": 0.5, "neon": 1.0})
    assert st.loads == 2  # each adapter read once
    assert np.array_equal(_image(client, lora={"ink": 1.0}), ink)  # switched back: no reload, same image
    assert np.array_equal(_image(client), base)  # a request without lora runs the base model
    assert np.array_equal(_image(client, lora={"ink": 0}), base)  # scale 0 is "off"
    assert st.loads == 2
    for a, b in [(ink, base), (neon, base), (ink, neon), (both, ink)]:
        assert not np.array_equal(a, b)
    _image(client, lora={"wood": 1.0})  # a third adapter with max_loras 2: the least recently used goes
    assert st.loads == 3 and sorted(st.modules) == ["ink", "wood"]


def test_unknown_adapter_bad_scale_and_models_listing(env):
    client, *_ = env
    r = client.post("/v1/images/generations", json={**IMG, "lora": {"oak": 1.0}})
    assert r.status_code == 404 and r.json()["error"]["param"] == "lora"
    assert "'oak'" in r.json()["error"]["message"] and "'ink', 'neon', 'wood'" in r.json()["error"]["message"]
    r = client.post("/v1/images/generations", json={**IMG, "lora": {"ink": 11}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "lora" and "[-10, 10]" in r.text
    r = client.post("/v1/images/generations", json={**IMG, "lora": "ink"})
    assert r.status_code == 422 and "lora" in r.text
    r = client.post("/v1/videos", json={"prompt": "a red circle", "frames": 5, "lora": {"oak": 1.0}})
    assert r.status_code == 404 and r.json()["error"]["param"] == "lora"
    cards = client.get("/v1/models").json()["data"]
    assert cards[0]["loras"] == ["ink", "neon", "wood"]


def test_batches_never_mix_adapter_sets(env):
    _, service, engine = env
    info = engine.info
    reqs = [ImageRequest(**IMG, lora={"ink": 1.0}), ImageRequest(**IMG, lora={"neon": 1.0}),
            ImageRequest(**IMG, lora={"ink": 1.0, "neon": 0.0}), ImageRequest(**IMG)]
    payloads = [resolve_image(r, info, max_images=8, max_steps=100, loras=service.lora_names()) for r in reqs]
    calls = []
    real = engine.pipe.generate_many

    def spy(prompts, **kw):
        calls.append((len(prompts), kw["loras"]))
        return real(prompts, **kw)

    engine.pipe.generate_many = spy
    try:
        results = engine.run_images(payloads)
    finally:
        del engine.pipe.generate_many
    assert sorted(calls, key=str) == sorted([(2, {"ink": 1.0}), (1, {"neon": 1.0}), (1, {})], key=str)
    assert results[0]["images"] == results[2]["images"]  # the same set, spelled two ways, batched together
    assert results[0]["batch"] == 2 and results[1]["batch"] == 1


def test_video_job_with_an_adapter(env):
    client, *_ = env
    r = client.post("/v1/videos", json={"prompt": "a red circle", "frames": 5, "steps": 2, "lora": {"neon": 0.8}})
    assert r.status_code == 202, r.text
    job_id, deadline = r.json()["id"], time.monotonic() + 60
    while (job := client.get(f"/v1/videos/{job_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "completed", job
    assert job["lora"] == {"neon": 0.8}
