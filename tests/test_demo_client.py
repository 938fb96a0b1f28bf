"""The demo's HTTP client and its Gradio handlers.

Fast tests run against tests/fake_api.py (the HTTP contract with canned bytes); the
`live` tests run the same paths against a real `omnidit serve` subprocess on the tiny model.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from fake_api import FAIL_MESSAGE, MODEL_ID, SECOND_MODEL_ID, free_port, serve_fake_api
from live_api import live_service, serve_unavailable_reason
from PIL import Image

from omnidit.demo.client import (ApiError, AuthError, BadRequest, NotFound, OmniClient, ServiceUnreachable,
                                 parse_size)
from omnidit.generation import read_video

pytestmark = pytest.mark.timeout(120)


def wait_done(client: OmniClient, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = client.get_video(job_id)
        seen.append((job.status, job.progress))
        if job.done:
            return job, seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not done after {timeout} s: {seen[-5:]}")


def mp4_frames(data: bytes, tmp_path) -> np.ndarray:
    p = tmp_path / "v.mp4"
    p.write_bytes(data)
    return read_video(p)


# -- the client against the fake service --------------------------------------------------------

@pytest.fixture(scope="module")
def fake():
    with serve_fake_api(job_seconds=0.6) as (url, app):
        yield url, app


def test_image_roundtrip_sends_contract_body(fake):
    url, app = fake
    with OmniClient(url) as c:
        pngs = c.generate_images("a red circle", size="48x32", seed=3, steps=4, guidance=2.5)
    assert len(pngs) == 1
    assert Image.open(io.BytesIO(pngs[0])).size == (48, 32)
    assert app.state.requests[-1][2] == {"prompt": "a red circle", "n": 1, "size": "48x32", "seed": 3, "steps": 4,
                                         "guidance": 2.5, "response_format": "b64_json"}


def test_video_job_lifecycle(fake, tmp_path):
    url, _ = fake
    with OmniClient(url) as c:
        job = c.create_video("a blue square, moving right", size="32x32", frames=5)
        assert job.status == "queued" and job.progress == 0 and not job.done
        job, seen = wait_done(c, job.id)
        assert job.status == "completed" and job.progress == 100
        assert any(s == "in_progress" for s, _ in seen)
        progress = [p for _, p in seen]
        assert progress == sorted(progress)  # never goes backwards
        assert mp4_frames(c.video_content(job.id), tmp_path).shape == (5, 32, 32, 3)
        assert job.id in [j.id for j in c.list_videos()]


def test_cancel_and_failed_jobs(fake):
    url, _ = fake
    with OmniClient(url) as c:
        job = c.create_video("a red circle forever", size="32x32", frames=5)
        echoed = c.cancel_video(job.id)
        assert echoed.status == "cancelled"
        assert c.get_video(job.id).status == "cancelled"  # cancel keeps the record
        c.delete_video(job.id)  # delete removes it
        with pytest.raises(NotFound):
            c.get_video(job.id)
        bad = c.create_video("a red circle, fail", size="32x32", frames=5)
        bad, _ = wait_done(c, bad.id)
        assert bad.status == "failed" and bad.error == FAIL_MESSAGE


def test_typed_errors_carry_the_service_message(fake):
    url, _ = fake
    with OmniClient(url) as c:
        with pytest.raises(BadRequest) as e:
            c.generate_images("x", size="999x999")
        assert e.value.status == 400 and e.value.param == "size" and "999x999" in e.value.message
        with pytest.raises(NotFound, match="no video job 'nope'"):
            c.get_video("nope")
        with pytest.raises(ApiError, match="is queued, not completed|is in_progress, not completed") as e:
            c.video_content(c.create_video("a red circle forever", size="32x32").id)
        assert e.value.status == 409
        with pytest.raises(NotFound, match="^Not Found$"):  # FastAPI's own {"detail": ...} body, no "error" key
            c._json("GET", "/no/such/route")


def test_health_503_says_not_ready(fake):
    url, app = fake
    app.state.ready = False
    try:
        with OmniClient(url) as c, pytest.raises(ApiError) as e:
            c.health()
        assert e.value.status == 503
        assert e.value.message == f"service at {url} is not ready: no generator replica yet"
    finally:
        app.state.ready = True


def test_unreachable_service_is_named():
    dead = f"http://127.0.0.1:{free_port()}"
    with OmniClient(dead, connect_timeout=2) as c:
        with pytest.raises(ServiceUnreachable, match=f"service unreachable at {dead}$"):
            c.health()


def test_api_key_is_sent_as_bearer():
    with serve_fake_api(api_key="s3cret") as (url, _):
        with OmniClient(url) as c, pytest.raises(AuthError, match="API key") as e:
            c.models()
        assert e.value.status == 401
        with OmniClient(url, api_key="s3cret") as c:
            assert [m["id"] for m in c.models()] == [MODEL_ID]
        from omnidit.demo.app import DemoConfig, DemoHandlers  # `omnidit demo --api-key` reaches the handlers

        assert DemoHandlers(DemoConfig(api_url=url)).service_status()[0] == "⚠️ invalid or missing API key"
        assert DemoHandlers(DemoConfig(api_url=url, api_key="s3cret")).service_status()[0].startswith("Service ")


def test_input_validation():
    assert parse_size("64x32") == (64, 32)
    for bad in ("64", "ax3", "0x16", None):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
    with pytest.raises(ValueError, match="api url"):
        OmniClient("localhost:8000")


# -- the demo's handlers through gradio_client --------------------------------------------------

@pytest.fixture(scope="module")
def demo(fake):
    from gradio_client import Client

    from omnidit.demo.app import DemoConfig, launch

    port = free_port()
    app = launch(DemoConfig(api_url=fake[0], poll_interval=0.1), port=port, block=False)
    yield Client(f"http://127.0.0.1:{port}", verbose=False)
    app.close()


def test_demo_image_and_gallery(demo):
    img, gallery, err = demo.predict("a red circle at the top left on a black background", "32x32", 0, 7, 0, "",
                                     api_name="/generate_image")
    assert err == ""
    assert Image.open(img).size == (32, 32)
    assert gallery[0]["caption"] == "a red circle at the top left on a black background"


def test_demo_video_progress_then_player(demo, tmp_path):
    job = demo.submit("a blue square on a white background, moving right", "32x32", 5, 0, 0, 0, "",
                      api_name="/generate_video")
    final = job.result(timeout=60)
    statuses = [out[0] for out in job.outputs()]  # progress html of every yield
    assert any('data-status="in_progress"' in s for s in statuses), statuses
    progress_html, video, gallery, err = final
    assert 'data-status="completed"' in progress_html and err == ""
    assert read_video(video).shape == (5, 32, 32, 3)
    assert "video" in gallery[0]


def test_demo_advanced_cache_choice_is_sent_as_cache(demo, fake):
    from omnidit.demo.app import CACHE_DEFAULT, _cache

    app = fake[1]
    assert _cache(CACHE_DEFAULT, 0.3) is None and _cache("none", 0.3) == "none"
    assert _cache("fbcache", None) == _cache("fbcache", 0) == "fbcache" and _cache("magcache", 0.12) == "magcache:0.12"
    # (prompt, size, steps, seed, guidance, negative, model, lora, lora scale, cache, cache threshold)
    _, _, err = demo.predict("a red circle", "32x32", 0, 7, 0, "", None, "none", 1.0, "teacache", 0.3,
                             api_name="/generate_image")
    assert err == "" and app.state.requests[-1][2]["cache"] == "teacache:0.3"
    demo.predict("a red circle", "32x32", 0, 7, 0, "", None, "none", 1.0, CACHE_DEFAULT, None,
                 api_name="/generate_image")
    assert "cache" not in app.state.requests[-1][2]  # the model's own default: no field
    progress_html, _, _, err = demo.submit("a blue square, moving right", "32x32", 5, 0, 0, 0, "", None, "none",
                                           1.0, "fbcache", None, api_name="/generate_video").result(timeout=30)
    assert err == "" and 'data-status="completed"' in progress_html
    assert app.state.requests[-1][2]["cache"] == "fbcache"
    with OmniClient(fake[0]) as c:
        c.create_video("a red circle", size="32x32", frames=5, cache="none")
    assert app.state.requests[-1][2]["cache"] == "none"


def test_demo_stop_cancels_the_job(demo):
    job = demo.submit("a red circle forever", "32x32", 5, 0, 0, 0, "", api_name="/generate_video")
    deadline = time.monotonic() + 20
    while not any('data-status="in_progress"' in o[0] for o in job.outputs()):
        assert time.monotonic() < deadline, "job never reported progress"
        time.sleep(0.1)
    assert demo.predict(api_name="/stop_video") == ""
    progress_html, video, _, err = job.result(timeout=20)
    assert 'data-status="cancelled"' in progress_html and video is None and err == ""


def test_demo_shows_errors_in_plain_words(demo):
    _, _, err = demo.predict("   ", "32x32", 0, 0, 0, "", api_name="/generate_image")
    assert err == "**Error:** Please enter a prompt."
    _, _, err = demo.predict("a red circle", "999x999", 0, 0, 0, "", api_name="/generate_image")
    assert err.startswith("**Error:** size must be between") and "Traceback" not in err
    progress_html, video, _, err = demo.submit("a red circle, fail", "32x32", 5, 0, 0, 0, "",
                                               api_name="/generate_video").result(timeout=30)
    assert err == f"**Error:** {FAIL_MESSAGE}" and 'data-status="failed"' in progress_html and video is None
    assert demo.predict(api_name="/service_status")[0].startswith("Service ")


def test_demo_fits_controls_to_the_model_card(demo):
    from omnidit.demo.app import frames_range, size_choices

    status, image_size, video_size, frames, picker = demo.predict(api_name="/service_status")
    assert status.startswith("Service ") and MODEL_ID in status
    assert [c[0] for c in picker["choices"]] == [MODEL_ID] and picker["value"] == MODEL_ID
    # gradio_client hands back the component updates: the card's default size and sizes up to its max
    assert image_size["value"] == video_size["value"] == "64x64"
    assert [c[0] for c in image_size["choices"]] == ["16x16", "32x32", "64x64", "128x128"]
    assert (frames["minimum"], frames["maximum"], frames["step"], frames["value"]) == (5, 33, 4, 9)
    card = {"defaults": {"size": "32x32"}, "limits": {"max_size": "64x64", "size_multiple": 16, "max_frames": 17,
                                                      "frames_multiple": 4}}
    assert size_choices(card) == (["16x16", "32x32", "64x64"], "32x32")
    assert size_choices({"limits": {"max_size": "128x64", "size_multiple": 16}}) == \
        (["16x16", "32x32", "64x64", "128x64"], "64x64")
    assert frames_range(card) == {"minimum": 5, "maximum": 17, "step": 4, "value": 9}
    assert size_choices({"id": "x"})[1] == "64x64" and frames_range({"id": "x"}) is None  # no limits: static


@pytest.fixture(scope="module")
def two_models():
    with serve_fake_api(job_seconds=0.3, models=(MODEL_ID, SECOND_MODEL_ID)) as (url, app):
        from gradio_client import Client

        from omnidit.demo.app import DemoConfig, launch

        port = free_port()
        demo = launch(DemoConfig(api_url=url, poll_interval=0.1), port=port, block=False)
        yield Client(f"http://127.0.0.1:{port}", verbose=False), app, url
        demo.close()


def test_demo_model_picker_sends_the_picked_model(two_models):
    demo, app, _ = two_models
    status, image_size, _, frames, picker = demo.predict(api_name="/service_status")
    assert f"models: {MODEL_ID}, {SECOND_MODEL_ID}" in status
    assert [c[0] for c in picker["choices"]] == [MODEL_ID, SECOND_MODEL_ID] and picker["value"] == MODEL_ID
    assert picker["interactive"] is True and image_size["value"] == "64x64" and frames["maximum"] == 33
    # picking the second model refits the controls to its card
    image_size, video_size, frames = demo.predict(SECOND_MODEL_ID, api_name="/fit_model")
    assert image_size["value"] == video_size["value"] == "32x32" and frames["maximum"] == 17
    assert [c[0] for c in image_size["choices"]] == ["16x16", "32x32", "64x64"]
    img, _, err = demo.predict("a red circle", "32x32", 0, 7, 0, "", SECOND_MODEL_ID, api_name="/generate_image")
    assert err == "" and app.state.requests[-1][2]["model"] == SECOND_MODEL_ID
    progress_html, video, _, err = demo.submit("a blue square, moving right", "32x32", 5, 0, 0, 0, "",
                                               SECOND_MODEL_ID, api_name="/generate_video").result(timeout=30)
    assert err == "" and 'data-status="completed"' in progress_html
    assert app.state.requests[-1][2]["model"] == SECOND_MODEL_ID
    assert [j["model"] for j in app.state.jobs.values()] == [SECOND_MODEL_ID]
    # the default model is what a request without a pick (an older page) gets: no model field
    demo.predict("a red circle", "32x32", 0, 7, 0, "", api_name="/generate_image")
    assert "model" not in app.state.requests[-1][2]


def test_demo_shows_an_unknown_model_in_plain_words(two_models):
    from omnidit.demo.app import DemoConfig, DemoHandlers

    h = DemoHandlers(DemoConfig(api_url=two_models[2]))
    with pytest.warns(UserWarning):
        img, _, _, err = h.generate_image("a red circle", "32x32", 0, 0, 0, "", [], model="gone")
    assert img is None and err == (f"**Error:** model 'gone' is not served here; this service serves "
                                   f"'{MODEL_ID}', '{SECOND_MODEL_ID}'")


def test_demo_names_an_unreachable_service():
    from omnidit.demo.app import DemoConfig, DemoHandlers

    dead = f"http://127.0.0.1:{free_port()}"
    h = DemoHandlers(DemoConfig(api_url=dead))
    with pytest.warns(UserWarning):  # gr.Warning outside a request context falls back to warnings.warn
        img, _, _, err = h.generate_image("a red circle", "32x32", 0, 0, 0, "", [])
    assert img is None and err == f"**Error:** service unreachable at {dead}"
    assert h.service_status()[0] == f"⚠️ service unreachable at {dead}"
    outs = list(h.run_video("a red circle", "32x32", 5, 0, 0, 0, "", []))
    assert outs[-1][-1] == f"**Error:** service unreachable at {dead}"


def test_cli_rejects_bad_arguments_in_one_line(capsys):
    import socket

    from omnidit.cli import main

    assert main(["demo", "--api", "localhost:8000"]) == 2
    assert capsys.readouterr().err.strip() == \
        "omnidit demo: error: --api must be an http:// or https:// URL, got 'localhost:8000'"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["demo", "--port", str(s.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--port", "0"])
    assert e.value.code == 2


# -- against a live `omnidit serve` (tiny model) ------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    reason = serve_unavailable_reason()
    if reason:
        pytest.skip(f"live service tests skipped: {reason}")
    from tiny_models import make_tiny_model_dir  # torch + diffusers: only when the service is there

    work = tmp_path_factory.mktemp("live")
    model = make_tiny_model_dir(work / "tiny")
    with live_service(model, work) as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_live_client(live, tmp_path):
    with OmniClient(live) as c:
        assert c.health() is not None and c.models()
        png = c.generate_images("a red circle on a black background", size="32x32", seed=1, steps=2)[0]
        assert Image.open(io.BytesIO(png)).size == (32, 32)
        job = c.create_video("a blue square on a white background, moving right", size="32x32", frames=5, steps=2)
        job, _ = wait_done(c, job.id, timeout=180)
        assert job.status == "completed", job.error
        assert mp4_frames(c.video_content(job.id), tmp_path).shape == (5, 32, 32, 3)
        with pytest.raises(BadRequest) as e:
            c.generate_images("a red circle", size="13x7")
        assert e.value.message and "size" in e.value.message
        with pytest.raises(NotFound):
            c.get_video("video_does_not_exist")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_live_demo_through_gradio_client(live):
    from gradio_client import Client

    from omnidit.demo.app import DemoConfig, launch

    port = free_port()
    app = launch(DemoConfig(api_url=live, poll_interval=0.2), port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        img, _, err = client.predict("a red circle at the top left on a black background", "32x32", 2, 0, 0, "",
                                     api_name="/generate_image")
        assert err == "" and Image.open(img).size == (32, 32)
        job = client.submit("a blue square on a white background, moving right", "32x32", 5, 2, 0, 0, "",
                            api_name="/generate_video")
        progress_html, video, gallery, err = job.result(timeout=180)
        assert err == "" and 'data-status="completed"' in progress_html
        assert read_video(video).shape == (5, 32, 32, 3) and len(gallery) == 2
        _, _, err = client.predict("a red circle", "13x7", 0, 0, 0, "", api_name="/generate_image")
        assert err.startswith("**Error:** ") and "size" in err
    finally:
        app.close()
