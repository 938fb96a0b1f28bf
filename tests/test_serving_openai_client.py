"""The official `openai` Python client, unmodified, against the live service: real Ray Serve on the
shipped `shapes-turbo` model (CPU). Every call of issue 21's table, streaming included, and errors
surfacing as the client's exception types carrying our message."""

from __future__ import annotations

import base64
import io
import time
from types import SimpleNamespace

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("ray.serve")

from fake_api import free_port  # noqa: E402
from PIL import Image  # noqa: E402

from omnidit.serving import app as serving_app  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")]  # the client warns on videos.*
KEY = "openai-client-test-key"
MODEL = "shapes-turbo"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    settings = ServeSettings(model=MODEL, data_dir=str(tmp_path_factory.mktemp("data")), api_key=KEY, device="cpu",
                             max_batch_size=4, batch_wait_s=0.05, poll_s=0.1, health_check_period_s=5.0)
    try:
        url = serving_app.start(settings, port=free_port(), num_cpus=2, log_to_driver=False)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
        yield SimpleNamespace(url=url, client=client)
        client.close()
    finally:
        serving_app.stop()


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=int)


def test_images_generate(live):
    c = live.client
    r = c.images.generate(prompt="a red circle", n=2, size="64x64", response_format="b64_json",
                          extra_body={"seed": 5})
    assert len(r.data) == 2 and r.size == "64x64" and r.output_format == "png"
    a, b = (_pixels(d.b64_json) for d in r.data)
    assert a.shape == (64, 64, 3) and np.abs(a - b).max() > 0  # seeds 5 and 6
    again = c.images.generate(prompt="a red circle", size="auto", extra_body={"seed": 5})
    assert again.size == "64x64" and np.abs(_pixels(again.data[0].b64_json) - a).max() <= 1  # the same image
    r = c.images.generate(prompt="a blue square", model=MODEL, output_format="jpeg", output_compression=60,
                          quality="high", background="opaque", moderation="low", style="natural", user="tester")
    assert r.output_format == "jpeg" and base64.b64decode(r.data[0].b64_json)[:3] == b"\xff\xd8\xff"
    url = c.images.generate(prompt="a green triangle", response_format="url", output_format="webp").data[0].url
    got = c.get(url.removeprefix(live.url + "/v1"), cast_to=openai._legacy_response.HttpxBinaryResponseContent)
    assert got.content[:4] == b"RIFF"


def test_images_stream(live):
    events = list(live.client.images.generate(prompt="a yellow star", size="64x64", stream=True, partial_images=2,
                                              extra_body={"seed": 3}))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = _pixels(events[-1].b64_json)
    assert final.shape == (64, 64, 3) and events[-1].size == "64x64"
    assert all(_pixels(e.b64_json).shape == final.shape for e in events[:2])
    plain = live.client.images.generate(prompt="a yellow star", size="64x64", extra_body={"seed": 3})
    assert np.abs(_pixels(plain.data[0].b64_json) - final).max() <= 1  # streaming changes nothing about the image


def test_videos_create_poll_download_list_delete(live):
    c = live.client
    t0 = time.monotonic()
    video = c.videos.create(prompt="a red circle moving right", size="64x64", seconds="4")
    assert video.status == "queued" and video.object == "video"
    done = c.videos.poll(video.id)  # follows openai-poll-after-ms
    assert done.status == "completed" and done.progress == 100 and done.frames == 33, done  # type: ignore[attr-defined]
    print(f"4 s video (33 frames 64x64) in {time.monotonic() - t0:.1f} s")
    mp4 = c.videos.download_content(video.id).content
    assert mp4[4:8] == b"ftyp"
    thumb = c.videos.download_content(video.id, variant="thumbnail").content
    assert Image.open(io.BytesIO(thumb)).size == (64, 64)
    retrieved = c.videos.retrieve(video.id)
    assert retrieved.id == video.id and retrieved.status == "completed"
    assert video.id in [v.id for v in c.videos.list(limit=10)]
    # extra_body fields travel as form fields; a second job for the list's pagination
    small = c.videos.create(prompt="a blue square", size="32x32", extra_body={"frames": 5, "steps": 2, "seed": 1})
    assert small.frames == 5 and small.steps == 2 and small.seed == 1  # type: ignore[attr-defined]
    c.videos.poll(small.id)
    page = c.videos.list(limit=1)
    assert len(page.data) == 1 and page.has_more is True
    ids = [v.id for v in c.videos.list(limit=1)]  # iterating follows after=<last_id>, page by page
    assert {video.id, small.id} <= set(ids) and len(ids) == len(set(ids))
    deleted = c.videos.delete(video.id)
    assert deleted.id == video.id and deleted.deleted is True and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError) as e:
        c.videos.retrieve(video.id)
    assert f"no video job {video.id!r}" in e.value.message


def test_errors_are_the_clients_exception_types_with_our_message(live):
    c = live.client
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.images.generate(prompt="x", size="1024x1024")
    assert e.value.status_code == 422 and e.value.body["param"] == "size" and "up to 128x128" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        c.images.generate(prompt="x", model="dall-e-3")
    assert e.value.body["code"] == "model_not_found" and MODEL in e.value.message
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.images.generate(prompt="x", output_format="gif")
    assert e.value.body["param"] == "output_format"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.videos.create(prompt="x", size="720x1280")  # an OpenAI size
    assert e.value.body["param"] == "size" and "multiples of 16 up to 128x128" in e.value.message
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.videos.create(prompt="x", seconds="12")
    assert e.value.body["param"] == "seconds" and "at most 33 frames" in e.value.message
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.videos.create(prompt="x", size="64x64", input_reference=("start.png", b"\x89PNG\r\n", "image/png"))
    assert e.value.body["param"] == "input_reference" and "not a readable image" in e.value.message
    bad = openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert "API key" in e.value.message
    assert [m.id for m in c.models.list()] == [MODEL]
