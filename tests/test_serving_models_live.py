"""Two models and a content policy on a real Ray Serve (CPU, tiny random models), driven by the official
`openai` client: `model` routes to each model's generator deployment, an unknown model is the client's
NotFoundError with our message, /v1/models lists both, a video job runs on the second model; a blocked
prompt is the client's BadRequestError with code content_policy_violation, and the audit log the ingress
writes has the decision without the prompt (issues 21 part 4 and 26)."""

from __future__ import annotations

import base64
import io
import json
import time
from types import SimpleNamespace

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("ray.serve")

from fake_api import free_port  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

from omnidit.serving import app as serving_app  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400),
              pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")]
SECRET = "please blow up the moon"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    a = make_tiny_model_dir(root / "tiny-a")
    b = make_tiny_model_dir(root / "tiny-b", seed=1, sampling={"width": 48, "height": 32, "max_width": 96})
    (root / "policy.yaml").write_text("blocked_terms:\n  violence: [kill, blow up]\n")
    settings = ServeSettings(model=[str(a), str(b)], data_dir=str(root / "data"), device="cpu", poll_s=0.1,
                             health_check_period_s=5.0, moderation=str(root / "policy.yaml"))
    try:
        url = serving_app.start(settings, port=free_port(), num_cpus=2, log_to_driver=False)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        yield SimpleNamespace(url=url, client=client, settings=settings)
        client.close()
    finally:
        serving_app.stop()


def _size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_models_route_to_their_deployments(live):
    c = live.client
    assert [m.id for m in c.models.list()] == ["tiny-a", "tiny-b"]
    first = c.images.generate(prompt="a red circle", extra_body={"steps": 2, "seed": 1})
    assert first.size == "32x32" and _size(first.data[0].b64_json) == (32, 32)  # no model: the first
    second = c.images.generate(prompt="a red circle", model="tiny-b", extra_body={"steps": 2, "seed": 1})
    assert second.size == "48x32" and _size(second.data[0].b64_json) == (48, 32)
    with pytest.raises(openai.NotFoundError) as e:
        c.images.generate(prompt="a red circle", model="dall-e-3")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    assert e.value.message.endswith("model 'dall-e-3' is not served here; this service serves 'tiny-a', 'tiny-b'")
    with pytest.raises(openai.NotFoundError) as e:
        c.videos.create(prompt="a red circle", model="sora-2")
    assert e.value.body["code"] == "model_not_found" and "'tiny-a', 'tiny-b'" in e.value.message


def test_video_job_on_the_second_model(live):
    c = live.client
    video = c.videos.create(prompt="a blue square moving right", model="tiny-b",
                            extra_body={"frames": 5, "steps": 2, "seed": 3})
    assert video.model == "tiny-b" and video.size == "48x32"
    deadline = time.monotonic() + 180
    while (video := c.videos.retrieve(video.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, video
        time.sleep(0.2)
    assert video.status == "completed" and video.model == "tiny-b", video.error
    assert c.videos.download_content(video.id).read()[4:8] == b"ftyp"


def test_policy_blocks_a_prompt_on_ray_serve_and_audits_it_without_the_text(live):
    c = live.client
    with pytest.raises(openai.BadRequestError) as e:
        c.images.generate(prompt=SECRET, model="tiny-b")
    assert e.value.body["code"] == "content_policy_violation" and "violence" in e.value.message
    assert "blow" not in e.value.message.lower() and "moon" not in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.videos.create(prompt=SECRET)
    assert e.value.body["code"] == "content_policy_violation"
    assert c.videos.list().data == [] or all(v.prompt != SECRET for v in c.videos.list().data)  # nothing queued
    audit = live.settings.data_path / "audit.jsonl"  # the ingress's (same node here: data_dir is local)
    text = audit.read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    blocked = [r for r in rows if r["decision"] == "blocked"]
    assert len(blocked) == 2 and {(r["stage"], r["category"]) for r in blocked} == {("prompt", "violence")}
    assert all(r["prompt_hmac"].startswith("hmac-sha256:") and r["id"].startswith("req_") for r in blocked)
    assert "blow" not in text and "moon" not in text  # no prompt text, no matched term
