"""End to end in a real browser: `omnidit demo` as its own process, driven by headless Chromium.

A user types a prompt, clicks Generate and sees an image; then runs a short video job,
watches its progress and sees the video player. Runs against the fake service (always,
when Chromium is installed) and against a live `omnidit serve` on the tiny model. A
full-page screenshot of each run is kept under test-artifacts/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_api import serve_fake_api
from live_api import demo_process, live_service, serve_unavailable_reason

from omnidit.demo.client import OmniClient

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIDEO_PROMPT = "a blue square on a white background, moving right"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the `playwright` pip package")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["fake", pytest.param("live", marks=pytest.mark.slow)])
def api(request, tmp_path):
    """-> (service URL, the fake app to inspect or None for the live service)"""
    if request.param == "fake":
        with serve_fake_api(job_seconds=1.0) as (url, app):
            yield url, app
        return
    reason = serve_unavailable_reason()
    if reason:
        pytest.skip(f"live service browser test skipped: {reason}")
    from tiny_models import make_tiny_model_dir  # torch + diffusers: only when the service is there

    with live_service(make_tiny_model_dir(tmp_path / "tiny"), tmp_path) as url:
        yield url, None


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def choose_size(page, elem_id: str, size: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(size)
    box.press("Enter")


def set_number(page, elem_id: str, value: int) -> None:
    """Type into a slider's number box, opening the visible tab's Advanced accordion first if needed."""
    box = page.locator(f"#{elem_id} input[type=number]")
    if not box.is_visible():
        page.get_by_text("Advanced").locator("visible=true").first.click()
        box.wait_for(state="visible")
    # A slider mounting as its accordion opens can overwrite a value typed at once: type until it sticks.
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(300)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"#{elem_id} would not take {value}; it shows {box.input_value()!r}")


def test_image_then_video_in_the_browser(api, browser, tmp_path, request):
    api_url, fake_app = api
    wait_ms = 30_000 if fake_app is not None else 180_000  # the live service denoises on a busy CPU
    shot = ARTIFACTS / f"demo-browser-{request.node.callspec.id}.png"
    ARTIFACTS.mkdir(exist_ok=True)
    with demo_process(api_url, tmp_path) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        try:
            page.goto(url)
            page.wait_for_selector("#image-prompt textarea", timeout=30_000)
            page.get_by_text(f"Service {api_url} is up").wait_for(timeout=15_000)

            # Image: type, click, see it. Steps cut to 2 keep the live run short.
            page.fill("#image-prompt textarea", "a red circle at the top left on a black background")
            choose_size(page, "image-size", "32x32")
            set_number(page, "image-steps", 2)
            page.click("#image-generate")
            img = page.locator("#image-output img")
            img.wait_for(timeout=wait_ms)
            page.wait_for_function("() => { const i = document.querySelector('#image-output img');"
                                   " return i && i.complete && i.naturalWidth > 0 }", timeout=15_000)
            assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [32, 32]

            # A bad size: the service's own message, in the error box, in plain words.
            choose_size(page, "image-size", "999x999")
            page.click("#image-generate")
            err = page.locator("#image-error")
            err.get_by_text("size").wait_for(timeout=wait_ms)
            assert "Error:" in err.inner_text() and "Traceback" not in page.content()

            # Video: a short job, progress from the job API, then the player.
            page.get_by_role("tab", name="Video").click()
            page.fill("#video-prompt textarea", VIDEO_PROMPT)
            choose_size(page, "video-size", "32x32")
            set_number(page, "video-frames", 5)
            set_number(page, "video-steps", 2)
            page.click("#video-generate")
            page.wait_for_selector('#video-progress [data-status="queued"], '
                                   '#video-progress [data-status="in_progress"]', timeout=wait_ms)
            page.wait_for_selector('#video-progress [data-status="completed"]', timeout=wait_ms)
            video = page.locator("#video-output video")
            video.wait_for(timeout=30_000)
            # The browser decoded the service's MP4: it knows the frame size.
            page.wait_for_function(
                "() => { const v = document.querySelector('#video-output video'); return v && v.readyState >= 2 }",
                timeout=30_000)
            assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [32, 32]
            assert "Done — 100%" in page.locator("#video-progress").inner_text()
            assert page.locator("#recent-gallery").locator("img, video").count() >= 2
            page.screenshot(path=str(shot), full_page=True)
            # What the browser's controls sent, as the service recorded the job.
            with OmniClient(api_url) as client:
                jobs = [j.raw for j in client.list_videos() if j.raw.get("prompt") == VIDEO_PROMPT]
            assert [(j["size"], j["frames"], j["steps"]) for j in jobs] == [("32x32", 5, 2)], jobs

            if fake_app is not None:  # Stop: only the fake can hold a job open long enough to stop it
                page.fill("#video-prompt textarea", "a red circle, forever")
                page.click("#video-generate")
                page.wait_for_selector('#video-progress [data-status="in_progress"]', timeout=wait_ms)
                page.click("#video-stop")
                page.wait_for_selector('#video-progress [data-status="cancelled"]', timeout=wait_ms)
                assert [j["status"] for j in fake_app.state.jobs.values() if "forever" in j["prompt"]] == ["cancelled"]
        except BaseException:
            page.screenshot(path=str(shot.with_name(shot.stem + "-failed.png")), full_page=True)
            raise
