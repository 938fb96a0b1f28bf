"""Start real processes for the demo's end-to-end tests: `omnidit serve` and `omnidit demo`.

Both run as subprocesses in their own session so teardown can end exactly the process
group each one started (Ray's helpers included) and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from fake_api import free_port

SERVE_START_TIMEOUT = 240  # Ray + model load on a busy 2-core machine
DEMO_START_TIMEOUT = 90


def serve_unavailable_reason() -> str | None:
    """Why the live service cannot be started here, or None if it can."""
    try:
        import omnidit.serving.app  # noqa: F401
    except ImportError as e:
        return f"omnidit.serving is not importable ({e})"
    return None


def serve_command(*args: str) -> list[str]:
    """`python -m omnidit serve ARGS`."""
    return [sys.executable, "-m", "omnidit", "serve", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
                GRADIO_ANALYTICS_ENABLED="False", RAY_USAGE_STATS_ENABLED="0")


def _stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGINT the process group we started (a clean Ray/uvicorn shutdown), then SIGKILL after `grace`."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    try:  # children (e.g. raylet) may outlive the leader in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str, *, ok=lambda code: code < 500) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering:\n{log.read_text()[-3000:]}")
        try:
            if ok(httpx.get(url, timeout=10).status_code):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def live_service(model_dir: Path, work: Path, *, api_key: str | None = None):
    """`omnidit serve --model model_dir` on a free port; yields its base URL once /health answers."""
    port = free_port()
    log = work / "serve.log"
    cmd = serve_command("--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                        "--data-dir", str(work / "data"), *(["--api-key", api_key] if api_key else []))
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        # Serve's proxy answers 404 until the app's routes are deployed: wait for a real 200.
        _wait_http(url + "/health", proc, log, SERVE_START_TIMEOUT, "omnidit serve", ok=lambda code: code == 200)
        yield url
    finally:
        _stop(proc)


def demo_command(api_url: str, port: int) -> list[str]:
    """`python -m omnidit demo` against `api_url`."""
    return [sys.executable, "-m", "omnidit", "demo", "--api", api_url, "--port", str(port), "--host", "127.0.0.1"]


@contextmanager
def demo_process(api_url: str, work: Path):
    """The demo as its own process on a free port; yields its URL once the page answers."""
    port = free_port()
    log = work / "demo.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(demo_command(api_url, port), stdout=f, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/", proc, log, DEMO_START_TIMEOUT, "omnidit demo")
        yield url
    finally:
        _stop(proc, grace=5)
