"""OpenAI's request and response shapes in-process (TestClient over the tiny model, no Ray): every images
field accepted, output formats, streaming previews as SSE, videos as multipart, thumbnails, the OpenAPI
document's deployment limits. The official client against the live service: test_serving_openai_client.py."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from omnidit.serving.api import create_app  # noqa: E402
from omnidit.serving.engine import GeneratorEngine, preview_steps  # noqa: E402
from omnidit.serving.service import LocalGeneratorClient, Service  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

IMG, VID = "/v1/images/generations", "/v1/videos"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    model = make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")
    settings = ServeSettings(model=str(model), data_dir=str(tmp_path_factory.mktemp("data")), device="cpu",
                             max_images=4, max_steps=40, poll_s=0.05, lease_s=10)
    engine = GeneratorEngine(settings)
    service = Service(settings, LocalGeneratorClient(engine), start_sweeper=False)
    with TestClient(create_app(service)) as c:
        yield c
    engine.close()
    service.close()


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_every_openai_images_field_is_accepted(client):
    body = {"prompt": "a red circle", "model": "tiny", "n": 1, "size": "auto", "quality": "hd",
            "response_format": "b64_json", "output_format": "png", "output_compression": 50, "background": "auto",
            "moderation": "low", "style": "vivid", "user": "u1", "safety_identifier": "s1", "complexity": "low",
            "stream": False, "partial_images": 2, "seed": 3, "steps": 2, "guidance": 2.0, "negative_prompt": "blur"}
    r = client.post(IMG, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["size"] == "32x32" and out["output_format"] == "png" and out["background"] == "opaque"
    assert _image(out["data"][0]["b64_json"]).size == (32, 32)  # "auto": the model's default size


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_output_formats_and_compression(client, fmt, magic):
    sizes = []
    for compression in (10, 95):
        r = client.post(IMG, json={"prompt": "a blue square", "seed": 1, "size": "48x32", "output_format": fmt,
                                   "output_compression": compression})
        assert r.status_code == 200, r.text
        data = base64.b64decode(r.json()["data"][0]["b64_json"])
        assert data.startswith(magic) and Image.open(io.BytesIO(data)).size == (48, 32)
        sizes.append(len(data))
    if fmt != "png":  # quality 10 is smaller than 95; png is lossless and ignores it
        assert sizes[0] < sizes[1]
    r = client.post(IMG, json={"prompt": "x", "output_format": fmt, "response_format": "url"})
    got = client.get(r.json()["data"][0]["url"])
    assert got.headers["content-type"] == f"image/{fmt}" and got.content.startswith(magic)


def test_preview_steps_are_evenly_spaced():
    assert preview_steps(4, 2) == [1, 3] and preview_steps(4, 3) == [1, 2, 3] and preview_steps(30, 2) == [10, 20]
    assert preview_steps(1, 3) == [] and preview_steps(2, 3) == [1] and preview_steps(8, 0) == []


def test_stream_sends_partial_images_then_the_image(client):
    body = {"prompt": "a green triangle", "seed": 7, "steps": 8, "size": "32x32"}
    r = client.post(IMG, json={**body, "stream": True, "partial_images": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert [e for e, _ in events] == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]
    partials = [d for _, d in events[:3]]
    assert [d["partial_image_index"] for d in partials] == [0, 1, 2]
    assert [d["step"] for d in partials] == [2, 4, 6]  # evenly spaced over 8 steps
    done = events[-1][1]
    assert done["type"] == "image_generation.completed" and done["size"] == "32x32" and done["seed"] == 7
    assert done["usage"]["total_tokens"] == 0
    frames = [np.asarray(_image(d["b64_json"]).convert("RGB"), dtype=int) for d in partials + [done]]
    assert all(f.shape == (32, 32, 3) for f in frames)
    # The previews are the x0 estimates: they approach the final image (each step refines it).
    gaps = [np.abs(f - frames[-1]).mean() for f in frames[:-1]]
    assert gaps[-1] < gaps[0], gaps
    # Streaming changes nothing about the result: the same seed without stream gives the same image.
    plain = client.post(IMG, json=body).json()["data"][0]["b64_json"]
    assert np.abs(np.asarray(_image(plain).convert("RGB"), dtype=int) - frames[-1]).max() <= 1


def test_stream_errors_before_streaming_are_json(client):
    r = client.post(IMG, json={"prompt": "x", "stream": True, "steps": 41})  # over --max-steps 40
    assert r.status_code == 422 and r.json()["error"]["param"] == "steps"


def test_video_as_multipart_with_string_seconds_and_thumbnail(client):
    from omnidit.generation import read_video

    # What the official client sends: multipart/form-data, every value a string; extra_body fields too.
    fields = {"prompt": "a red circle moving", "seconds": "1", "size": "32x32", "seed": "4", "steps": "2"}
    r = client.post(VID, files={k: (None, v) for k, v in fields.items()})
    assert r.request.headers["content-type"].startswith("multipart/form-data")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["frames"] == 9 and job["seed"] == 4 and job["steps"] == 2 and job["size"] == "32x32"
    assert r.headers["openai-poll-after-ms"] == "500"
    import time

    deadline = time.monotonic() + 60
    while (got := client.get(f"{VID}/{job['id']}")).json()["status"] not in ("completed", "failed"):
        assert got.headers["openai-poll-after-ms"] == "500" and time.monotonic() < deadline
        time.sleep(0.05)
    assert got.json()["status"] == "completed" and "openai-poll-after-ms" not in got.headers
    video = client.get(f"{VID}/{job['id']}/content", params={"variant": "video"})
    assert video.headers["content-type"] == "video/mp4"
    thumb = client.get(f"{VID}/{job['id']}/content", params={"variant": "thumbnail"})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    first = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB"), dtype=int)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "v.mp4").write_bytes(video.content)
        frames = read_video(Path(d) / "v.mp4")
    assert first.shape == (32, 32, 3) and np.abs(first - frames[0].astype(int)).mean() < 12  # lossy both ways


def test_video_input_reference_is_refused_naming_the_field(client):
    r = client.post(VID, data={"prompt": "x"}, files={"input_reference": ("start.png", b"\x89PNG...", "image/png")})
    assert r.status_code == 422 and r.json()["error"]["param"] == "input_reference"
    assert "not a readable image" in r.json()["error"]["message"]  # a real image: tests/test_serving_i2v.py
    r = client.post(VID, data={"prompt": "x", "input_reference[image_url]": "https://example.com/a.png"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "input_reference"
    r = client.post(VID, data={"prompt": "x", "size": "720x1280"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "size" and "up to 64x64" in r.json()["error"]["message"]


def test_list_pagination_fields(client):
    ids = [client.post(VID, json={"prompt": "x", "frames": 5, "steps": 1}).json()["id"] for _ in range(3)]
    page = client.get(VID, params={"limit": 2, "order": "asc"}).json()
    assert set(page) >= {"object", "data", "first_id", "last_id", "has_more"} and page["has_more"] is True
    rest = client.get(VID, params={"limit": 100, "order": "asc", "after": page["last_id"]}).json()
    seen = [j["id"] for j in page["data"] + rest["data"]]
    assert set(ids) <= set(seen) and len(seen) == len(set(seen)) and rest["has_more"] is False


def test_openapi_states_this_deployments_limits(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def branch(prop, type_):
        return next(b for b in prop.get("anyOf", [prop]) if b.get("type") == type_)

    image, video = schemas["ImageRequest"]["properties"], schemas["VideoRequest"]["properties"]
    assert branch(image["steps"], "integer")["maximum"] == 40 and branch(video["steps"], "integer")["maximum"] == 40
    assert branch(image["n"], "integer")["maximum"] == 4
    sizes = branch(image["size"], "string")["enum"]
    assert sizes[0] == "auto" and "64x64" in sizes and "80x16" not in sizes and "1024x1024" not in sizes
    assert branch(video["frames"], "integer")["enum"] == [1, 5, 9, 13, 17]
    post = spec["paths"]["/v1/videos"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"401", "404", "409", "415", "422", "429"} <= set(post["responses"])
    assert "404" in spec["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "text/event-stream" in spec["paths"][IMG]["post"]["responses"]["200"]["content"]
    assert "ImageStreamEvent" in schemas and "/v1/videos/{video_id}/cancel" in spec["paths"]
    assert client.get("/docs").status_code == 200
