"""The demo's image-to-video: a start image uploaded on the Video tab reaches POST /v1/videos as the
`input_reference` data URL (through gradio_client against the fake service)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fake_api import free_port, serve_fake_api
from PIL import Image

from omnidit.demo.client import OmniClient, image_data_url

pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def fake():
    with serve_fake_api(job_seconds=0.3) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "start.png"
    Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    ).save(path)
    return path


def _sent_image(body: dict) -> np.ndarray:
    head, _, payload = body["input_reference"].partition(",")
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))


def test_client_sends_the_start_image_as_a_data_url(fake, start, tmp_path):
    url, app = fake
    with OmniClient(url) as c:
        c.create_video(
            "a red circle, moving right", size="32x32", frames=5, image=start
        )
        assert np.array_equal(
            _sent_image(app.state.requests[-1][2]), np.asarray(Image.open(start))
        )
        c.create_video("a red circle", size="32x32", frames=5)
        assert "input_reference" not in app.state.requests[-1][2]
    (tmp_path / "bad.png").write_text("no image")
    with pytest.raises(ValueError, match="not a readable image"):
        image_data_url(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="cannot be read"):
        image_data_url(tmp_path / "missing.png")


def test_video_tab_upload_is_sent_as_input_reference(fake, start):
    from gradio_client import Client, handle_file

    from omnidit.demo.app import DemoConfig, launch

    url, app = fake
    port = free_port()
    demo = launch(DemoConfig(api_url=url, poll_interval=0.1), port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        # (prompt, size, frames, steps, seed, guidance, negative, model, lora, lora scale, cache, threshold, image)
        progress, _, _, err = client.submit(
            "a blue square, moving right",
            "32x32",
            5,
            0,
            0,
            0,
            "",
            None,
            "none",
            1.0,
            "model default",
            None,
            handle_file(str(start)),
            api_name="/generate_video",
        ).result(timeout=60)
        assert err == "" and 'data-status="completed"' in progress
        assert np.array_equal(
            _sent_image(app.state.requests[-1][2]), np.asarray(Image.open(start))
        )
    finally:
        demo.close()
