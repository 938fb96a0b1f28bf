"""The demo's adapter picker: filled from /v1/models `loras`, sent as the request's `lora` (fake service)."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")

from fake_api import SECOND_MODEL_ID, serve_fake_api  # noqa: E402

from omnidit.demo.app import NO_LORA, DemoConfig, DemoHandlers  # noqa: E402


def test_picker_lists_adapters_and_requests_carry_the_choice(tmp_path):
    with serve_fake_api(job_seconds=0.2) as (url, app):
        h = DemoHandlers(DemoConfig(api_url=url, poll_interval=0.05), out_dir=tmp_path)
        picker, scale = h.lora_choices()
        assert picker["choices"] == [NO_LORA, "ink"] and picker["visible"] and scale["visible"]
        path, *_ = h.generate_image("a red circle", "64x64", 0, 1, 0, "", [], None, "ink", 0.6)
        assert path is not None
        assert app.state.requests[-1][2]["lora"] == {"ink": 0.6}
        h.generate_image("a red circle", "64x64", 0, 1, 0, "", [], None, NO_LORA, 0.6)
        assert "lora" not in app.state.requests[-1][2]
        for _ in h.run_video("a red circle", "64x64", 5, 0, 1, 0, "", [], None, "ink", -0.5):
            pass
        assert app.state.requests[-1][1] == "/v1/videos" and app.state.requests[-1][2]["lora"] == {"ink": -0.5}
    with serve_fake_api(models=(SECOND_MODEL_ID,)) as (url, _):  # a card without adapters: picker hidden
        picker, scale = DemoHandlers(DemoConfig(api_url=url), out_dir=tmp_path).lora_choices()
        assert not picker["visible"] and not scale["visible"]
