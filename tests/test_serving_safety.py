"""Content safety in the HTTP API (in-process, tiny model, no Ray): the prompt hook at the ingress, the
output hook on the replica (image request 400, video job failed with no file), OpenAI's `moderation`
as strictness, AIGC labels and the visible label on served outputs, `store_prompts: hash`."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from tiny_classifiers import make_image_classifier  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

from omnidit.safety import prompt_hash, read_label  # noqa: E402
from omnidit.serving import content  # noqa: E402
from omnidit.serving.api import create_app  # noqa: E402
from omnidit.serving.engine import GeneratorEngine  # noqa: E402
from omnidit.serving.service import LocalGeneratorClient, Service  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402

IMG, VID = "/v1/images/generations", "/v1/videos"
SECRET = "a zebra named Quillon"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


def _env(model_dir, data, **kw):
    settings = ServeSettings(model=str(model_dir), data_dir=str(data), device="cpu", poll_s=0.05, lease_s=10, **kw)
    engine = GeneratorEngine(settings)
    service = Service(settings, LocalGeneratorClient(engine), start_sweeper=False)
    return TestClient(create_app(service)), service, engine


@pytest.fixture(scope="module")
def moderated(model_dir, tmp_path_factory):
    """Blocked terms, and an output classifier scoring every image nsfw 0.8: blocked at "auto" (0.75),
    allowed at "low" (0.9)."""
    root = tmp_path_factory.mktemp("moderated")
    make_image_classifier(root / "nsfw", {"safe": 0.2, "nsfw": 0.8})
    (root / "policy.yaml").write_text(
        "blocked_terms:\n  violence: [kill, blow up]\n"
        "output_classifier:\n  path: nsfw\n  thresholds: {nsfw: 0.75}\n"
        "low:\n  thresholds: {nsfw: 0.9}\n")
    client, service, engine = _env(model_dir, root / "data", moderation=str(root / "policy.yaml"))
    with client:
        yield client, service, engine
    engine.close()
    service.close()


@pytest.fixture(scope="module")
def labelled(model_dir, tmp_path_factory):
    client, service, engine = _env(model_dir, tmp_path_factory.mktemp("labelled"), visible_label="AI",
                                   visible_label_frames="all", label_producer="example.com", store_prompts="hash")
    with client:
        yield client, service, engine
    engine.close()
    service.close()


def _wait(client, job_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{VID}/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}")


def _audit(service) -> list[dict]:
    return [json.loads(x) for x in content.audit_path(service.settings).read_text().splitlines()]


@pytest.mark.parametrize("path,body", [
    (IMG, {"prompt": "please K I L L the lights"}),
    (IMG, {"prompt": "a cat", "negative_prompt": "ｂｌｏｗ ｕｐ"}),
    (VID, {"prompt": "blow-up a car", "frames": 5}),
])
def test_blocked_prompt_is_a_400_naming_the_category_only(moderated, path, body):
    client, service, _ = moderated
    before = service.store.counts()["queued"] + service.store.counts()["completed"]
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "content_policy_violation" and "violence" in err["message"]
    assert err["param"] == ("negative_prompt" if "negative_prompt" in body else "prompt")
    for word in ("kill", "blow", "ｂｌｏｗ"):
        assert word not in err["message"].lower()
    assert service.store.counts()["queued"] + service.store.counts()["completed"] == before  # nothing stored
    row = _audit(service)[-1]
    assert (row["stage"], row["decision"], row["category"]) == ("prompt", "blocked", "violence")


def test_output_hook_blocks_an_image_and_moderation_low_relaxes_it(moderated):
    client, service, _ = moderated
    r = client.post(IMG, json={"prompt": SECRET, "size": "32x32", "seed": 1})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "content_policy_violation" and "nsfw" in err["message"] and err["param"] == "output"
    assert list(service.outputs.images.iterdir()) == []
    ok = client.post(IMG, json={"prompt": SECRET, "size": "32x32", "seed": 1, "moderation": "low",
                                "response_format": "url"})
    assert ok.status_code == 200, ok.text
    rows = _audit(service)
    blocked, allowed = rows[-3], rows[-1]  # -2: the second request's prompt check
    assert (blocked["stage"], blocked["decision"], blocked["level"]) == ("output", "blocked", "auto")
    assert (allowed["stage"], allowed["decision"], allowed["level"]) == ("output", "allowed", "low")
    assert blocked["id"].startswith("req_") and rows[-2]["id"] == allowed["id"] != blocked["id"]
    assert SECRET.lower() not in content.audit_path(service.settings).read_text().lower()
    assert blocked["prompt_hmac"] == prompt_hash(content.prompt_key(service.settings), SECRET)
    bad = client.post(IMG, json={"prompt": "a cat", "moderation": "high"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "moderation"


def test_stream_previews_are_moderated_too(moderated):
    client, _, _ = moderated
    r = client.post(IMG, json={"prompt": "a cat", "size": "32x32", "stream": True, "partial_images": 1})
    events = [line for line in r.text.splitlines() if line.startswith("event:")]
    assert events == ["event: error"] and "content_policy_violation" in r.text


def test_output_hook_fails_a_video_job_and_keeps_no_file(moderated):
    client, service, _ = moderated
    job = client.post(VID, json={"prompt": "a red ball", "frames": 5, "size": "32x32"}).json()
    done = _wait(client, job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "content_policy_violation" and "nsfw" in done["error"]["message"]
    assert not service.outputs.video_path(job["id"]).exists()
    assert not service.outputs.thumbnail_path(job["id"]).exists()
    assert client.get(f"{VID}/{job['id']}/content").status_code == 409
    row = _audit(service)[-1]
    assert (row["id"], row["stage"], row["decision"]) == (job["id"], "output", "blocked")


def test_input_hook_blocks_a_start_image_before_anything_is_queued(moderated):
    """Image-to-video's start image (input_reference) goes through the policy's image classifier at the
    ingress: a blocked one is a 400 naming input_reference and the category; no job, no stored image."""
    from PIL import Image

    client, service, _ = moderated
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(buf, format="PNG")
    ref = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    before = sum(service.store.counts().values())
    r = client.post(VID, json={"prompt": "a red ball", "frames": 5, "size": "32x32", "input_reference": ref})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "content_policy_violation" and err["param"] == "input_reference"
    assert err["message"] == "the input_reference image was blocked by the content policy (category: nsfw)"
    assert sum(service.store.counts().values()) == before and list(service.outputs.inputs.iterdir()) == []
    row = _audit(service)[-1]
    assert (row["stage"], row["decision"], row["category"], row["field"]) == ("input", "blocked", "nsfw",
                                                                              "input_reference")
    assert row["id"].startswith("req_") and "red ball" not in content.audit_path(service.settings).read_text()
    # as the official client sends it: a multipart file upload
    r = client.post(VID, data={"prompt": "a red ball", "frames": "5", "size": "32x32"},
                    files={"input_reference": ("start.png", buf.getvalue(), "image/png")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_reference", r.text


def test_served_outputs_carry_both_labels(labelled):
    from PIL import Image

    client, service, engine = labelled
    r = client.post(IMG, json={"prompt": "a cat", "size": "64x64", "n": 2, "seed": 4, "output_format": "webp"})
    assert r.status_code == 200, r.text
    ids = set()
    for item in r.json()["data"]:
        data = base64.b64decode(item["b64_json"])
        (service.settings.data_path / "x.webp").write_bytes(data)
        label = read_label(service.settings.data_path / "x.webp")
        assert label["ContentProducer"] == "example.com" and label["ReservedCode1"] == "model=tiny"
        ids.add(label["ProduceID"])
    assert len(ids) == 2  # one ProduceID per output
    # The visible label: the served png differs from the pipeline's own frame in the bottom-right corner only.
    png = client.post(IMG, json={"prompt": "a cat", "size": "64x64", "seed": 4}).json()["data"][0]["b64_json"]
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
    raw = engine.pipe.generate_many(["a cat"], seeds=[4], frames=1, height=64, width=64)[0].frames[0]
    ys, xs = np.nonzero((served != raw).any(-1))
    assert len(ys) > 40 and ys.min() >= 32 and xs.min() >= 32, (len(ys), ys.min(), xs.min())
    assert (served[ys, xs].astype(int).sum(-1) < raw[ys, xs].astype(int).sum(-1)).mean() > 0.5  # a dark box
    job = client.post(VID, json={"prompt": SECRET, "frames": 5, "size": "32x32"}).json()
    assert _wait(client, job["id"])["status"] == "completed"
    mp4 = read_label(service.outputs.video_path(job["id"]))
    assert mp4["ProduceID"] == job["id"] and mp4["ContentProducer"] == "example.com"
    assert read_label(service.outputs.thumbnail_path(job["id"]))["ProduceID"] == job["id"]


def test_store_prompts_hash_keeps_no_text_in_finished_records(labelled):
    client, service, _ = labelled
    job = client.post(VID, json={"prompt": SECRET, "frames": 5, "size": "32x32"}).json()
    assert job["prompt"] == SECRET  # a queued job keeps the text its worker needs
    done = _wait(client, job["id"])
    key = content.prompt_key(service.settings)
    assert done["prompt"] == prompt_hash(key, SECRET)
    stored = service.store._conn.execute("SELECT prompt FROM jobs WHERE id = ?", (job["id"],)).fetchone()[0]
    assert stored == prompt_hash(key, SECRET)
    # Cancelled over HTTP: redacted at once. Failed by the reaper (or finished before a restart): by the sweep.
    other = client.post(VID, json={"prompt": "another zebra", "frames": 5, "size": "32x32"}).json()
    client.post(f"{VID}/{other['id']}/cancel")
    assert client.get(f"{VID}/{other['id']}").json()["prompt"] == prompt_hash(key, "another zebra")
    orphan = service.store.create("a third zebra", service.store.get(job["id"]).params)[0]
    service.store.cancel(orphan.id)
    assert service.store.get(orphan.id).prompt == "a third zebra"
    service.sweep()
    assert service.store.get(orphan.id).prompt == prompt_hash(key, "a third zebra")


def test_bad_safety_settings_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="store_prompts must be full or hash"):
        ServeSettings(store_prompts="none")
    with pytest.raises(ValueError, match="visible_label_frames must be ends or all"):
        ServeSettings(visible_label_frames="first")
    with pytest.raises(ValueError, match="moderation: policy file .* does not exist"):
        ServeSettings(moderation=str(tmp_path / "missing.yaml"))
