"""Image-to-video over HTTP in-process (TestClient over the tiny model, no Ray): `input_reference` as the
official `openai` client sends it (a multipart file) and as a JSON data URL; the start image stored under
the data dir, referenced by the job, kept for a job leased after a restart, deleted with the job."""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from fastapi.testclient import TestClient
from PIL import Image
from tiny_models import make_tiny_model_dir

from omnidit.generation import read_video
from omnidit.serving import input_image
from omnidit.serving.api import create_app
from omnidit.serving.engine import GeneratorEngine
from omnidit.serving.errors import ApiError
from omnidit.serving.schemas import ModelInfo, VideoRequest, resolve_video
from omnidit.serving.service import LocalGeneratorClient, Service
from omnidit.serving.settings import ServeSettings

pytestmark = pytest.mark.filterwarnings(
    "ignore:The Sora API:DeprecationWarning"
)  # the client warns on videos.*
KEY = "i2v-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
VID = "/v1/videos"
PROMPT = "a red circle on a black background, moving right"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("model") / "tiny", sampling={"steps": 2}
    )


@pytest.fixture(scope="module")
def start_png(tmp_path_factory) -> Path:
    from omnidit.shapes import parse_prompt, render

    path = tmp_path_factory.mktemp("img") / "start.png"
    Image.fromarray(render(parse_prompt(PROMPT), size=32)[0]).save(path)
    return path


def _settings(model_dir, data: Path) -> ServeSettings:
    return ServeSettings(
        model=str(model_dir),
        data_dir=str(data),
        api_key=KEY,
        device="cpu",
        max_steps=40,
        poll_s=0.05,
        lease_s=10,
    )


@pytest.fixture(scope="module")
def env(model_dir, tmp_path_factory):
    settings = _settings(model_dir, tmp_path_factory.mktemp("data"))
    engine = GeneratorEngine(settings)
    service = Service(settings, LocalGeneratorClient(engine), start_sweeper=False)
    with TestClient(create_app(service)) as client:
        yield client, service, engine
    engine.close()
    service.close()


def _wait(client, job_id, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{VID}/{job_id}", headers=AUTH).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} unfinished after {timeout}s")


def _frames(content: bytes) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "v.mp4").write_bytes(content)
        return read_video(Path(d) / "v.mp4").astype(int)


def _expected(engine, start_png, seed: int, image=True) -> np.ndarray:
    """The Pipeline's own I2V video through the same mp4 encoding."""
    gen = engine.pipe.generate(
        PROMPT, frames=5, seed=seed, image=start_png if image else None
    )
    with tempfile.TemporaryDirectory() as d:
        gen.save(Path(d) / "v.mp4")
        return read_video(Path(d) / "v.mp4").astype(int)


def test_the_openai_client_uploads_the_start_image(env, start_png):
    client, service, engine = env
    c = openai.OpenAI(
        base_url="http://testserver/v1", api_key=KEY, http_client=client, max_retries=0
    )
    with open(start_png, "rb") as f:
        video = c.videos.create(
            prompt=PROMPT,
            size="32x32",
            input_reference=f,
            extra_body={"frames": 5, "seed": 4},
        )
    assert video.status == "queued"
    stored = service.store.get(video.id).params["input_reference"]
    assert service.outputs.input_path(
        stored
    ).is_file()  # under the data dir, named by the job record
    assert _wait(client, video.id)["status"] == "completed"
    got = _frames(c.videos.download_content(video.id).content)
    want, t2v = (
        _expected(engine, start_png, 4),
        _expected(engine, start_png, 4, image=False),
    )
    assert (
        np.abs(got - want).max() <= 2
        and np.abs(got - t2v).mean() > 4 * np.abs(got - want).mean()
    )
    assert c.videos.delete(video.id).deleted
    assert not service.outputs.input_path(stored).exists()  # deleted with the job


def test_a_json_data_url_is_the_same_start_image(env, start_png):
    client, _, engine = env
    url = "data:image/png;base64," + base64.b64encode(start_png.read_bytes()).decode()
    for ref in (url, {"image_url": url}):
        r = client.post(
            VID,
            headers=AUTH,
            json={
                "prompt": PROMPT,
                "size": "32x32",
                "frames": 5,
                "seed": 4,
                "input_reference": ref,
            },
        )
        assert r.status_code == 202, r.text
        assert _wait(client, r.json()["id"])["status"] == "completed"
        got = _frames(
            client.get(f"{VID}/{r.json()['id']}/content", headers=AUTH).content
        )
        assert np.abs(got - _expected(engine, start_png, 4)).max() <= 2


def test_a_job_leased_after_a_restart_still_has_its_image(
    model_dir, start_png, tmp_path
):
    settings = _settings(model_dir, tmp_path / "data")
    engine = GeneratorEngine(
        settings, run_jobs=False
    )  # queues, runs nothing: the service "dies" after
    service = Service(settings, LocalGeneratorClient(engine), start_sweeper=False)
    with TestClient(create_app(service)) as client, open(start_png, "rb") as f:
        r = client.post(
            VID,
            headers=AUTH,
            data={"prompt": PROMPT, "size": "32x32", "frames": "5", "seed": "9"},
            files={"input_reference": ("start.png", f, "image/png")},
        )
        assert r.status_code == 202, r.text
    service.close()
    job_id = r.json()["id"]
    want = _expected(engine, start_png, 9)
    engine.close()
    engine = GeneratorEngine(
        settings
    )  # a fresh replica over the same store and data dir
    service = Service(settings, LocalGeneratorClient(engine), start_sweeper=False)
    try:
        with TestClient(create_app(service)) as client:
            assert _wait(client, job_id)["status"] == "completed"
            got = _frames(client.get(f"{VID}/{job_id}/content", headers=AUTH).content)
        assert np.abs(got - want).max() <= 2
    finally:
        engine.close()
        service.close()


@pytest.mark.parametrize(
    "form, files, json, words",
    [
        (
            None,
            None,
            {"input_reference": "data:image/png;base64,iVBORw0KGgo="},
            "not a readable image",
        ),
        (
            None,
            None,
            {"input_reference": "data:image/png;base64,@@@"},
            "does not decode",
        ),
        (
            None,
            None,
            {"input_reference": "https://example.com/a.png"},
            "fetches no URLs",
        ),
        (None, None, {"input_reference": {"file_id": "file_123"}}, "file ids"),
        (
            None,
            None,
            {"input_reference": {"image_url": "x", "detail": "high"}},
            "unknown key",
        ),
        ({"frames": "1"}, "png", None, "frames > 1"),
        ({}, "text", None, "not a readable image"),
    ],
)
def test_bad_start_images_are_422_naming_the_field(
    env, start_png, form, files, json, words
):
    client, service, _ = env
    before = set(service.outputs.inputs.iterdir())
    if json is not None:
        r = client.post(VID, headers=AUTH, json={"prompt": PROMPT, "frames": 5, **json})
    else:
        upload = start_png.read_bytes() if files == "png" else b"not an image"
        r = client.post(
            VID,
            headers=AUTH,
            data={"prompt": PROMPT, **form},
            files={"input_reference": ("start.png", upload, "image/png")},
        )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "input_reference" and words in err["message"], err
    assert set(service.outputs.inputs.iterdir()) == before  # nothing stored


def test_a_model_without_image_input_refuses_it_and_big_uploads_are_413():
    info = ModelInfo(
        id="t2v",
        name="t2v",
        width=32,
        height=32,
        max_width=64,
        max_height=64,
        max_frames=17,
        size_multiple=16,
        fps=8,
        steps=2,
        guidance=1.0,
        temporal_ratio=4,
        takes_image=False,
    )
    req = VideoRequest(
        prompt="x", frames=5, input_reference="data:image/png;base64,AAAA"
    )
    with pytest.raises(ApiError) as e:
        resolve_video(req, info, max_steps=10)
    assert (
        e.value.status == 422
        and e.value.param == "input_reference"
        and "takes no start image" in str(e.value)
    )
    with pytest.raises(ApiError) as e:
        input_image.data_url(b"\0" * (input_image.MAX_INPUT_BYTES + 1), "image/png")
    assert e.value.status == 413 and e.value.param == "input_reference"


def test_the_document_says_a_form_takes_the_start_image_as_a_file(env):
    client, _, _ = env
    doc = client.get("/openapi.json").json()
    content = doc["paths"][VID]["post"]["requestBody"]["content"]
    assert content["application/json"]["schema"]["$ref"].endswith("/VideoRequest")
    form = doc["components"]["schemas"][content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    branches = form["properties"]["input_reference"]["anyOf"]
    assert {"type": "string", "format": "binary"}.items() <= branches[0].items()
    # the deployment's limits hold for the form body as for JSON
    assert form["properties"]["steps"] == doc["components"]["schemas"]["VideoRequest"]["properties"]["steps"]
    assert "40" in form["properties"]["steps"]["description"]


def test_an_image_to_video_only_model_refuses_requests_without_an_image_before_queueing():
    from omnidit.serving.schemas import ImageRequest, resolve_image

    info = ModelInfo(id="i2v", name="i2v", width=32, height=32, max_width=64, max_height=64, max_frames=17,
                     size_multiple=16, fps=8, steps=2, guidance=1.0, temporal_ratio=4, needs_image=True)
    with pytest.raises(ApiError) as e:
        resolve_video(VideoRequest(prompt="x", frames=5), info, max_steps=10)
    assert e.value.status == 422 and e.value.param == "input_reference" and "image-to-video" in str(e.value)
    with pytest.raises(ApiError) as e:
        resolve_image(ImageRequest(prompt="x"), info, max_images=4, max_steps=10)
    assert e.value.status == 422 and e.value.param == "model"
    ok = resolve_video(VideoRequest(prompt="x", frames=5, input_reference="data:image/png;base64,AAAA"), info,
                       max_steps=10)
    assert ok["frames"] == 5
