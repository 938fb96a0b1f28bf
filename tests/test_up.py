"""`omnidit up` (the README's main command): service + demo together, both URLs printed; Ctrl-C
and SIGTERM (what `docker stop` and systemd send) stop both children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from fake_api import free_port
from live_api import _env, _stop, serve_unavailable_reason
from tiny_models import make_tiny_model_dir

pytestmark = pytest.mark.slow


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes in session `sid`, read from /proc."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(d))
    return pids


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("sig", "sigint_ignored"), [(signal.SIGINT, False), (signal.SIGTERM, False),
                                                     (signal.SIGTERM, True)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-started-with-SIGINT-ignored"])
def test_up_starts_service_and_demo_and_stops_both(tmp_path, sig, sigint_ignored):
    if (why := serve_unavailable_reason()) is not None:
        pytest.skip(why)
    model = make_tiny_model_dir(tmp_path / "model")
    api_port, demo_port = free_port(), free_port()
    log = tmp_path / "up.log"
    cmd = [sys.executable, "-m", "omnidit", "up", "--model", str(model), "--port", str(api_port),
           "--demo-port", str(demo_port), "--data-dir", str(tmp_path / "data")]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
                                preexec_fn=_ignore_sigint if sigint_ignored else None)
    try:
        deadline = time.monotonic() + 300
        while f"demo: http://127.0.0.1:{demo_port}" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert f"API:  http://127.0.0.1:{api_port}" in log.read_text()
        assert httpx.get(f"http://127.0.0.1:{api_port}/v1/models", timeout=30).status_code == 200
        while True:  # the demo prints its URL as it starts; give gradio a moment to bind
            try:
                page = httpx.get(f"http://127.0.0.1:{demo_port}/", timeout=30)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        children = [p for p in _session_pids(proc.pid) if p != proc.pid]
        assert children, "omnidit up started no child processes"
        os.kill(proc.pid, sig)  # SIGINT: what Ctrl-C sends; SIGTERM: what supervisors send
        t0 = time.monotonic()
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        # children shut down on the SIGINT `up` sends (an inherited SIG_IGN would leave them to the
        # 30 s kill fallback)
        assert time.monotonic() - t0 < 25, log.read_text()[-3000:]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{demo_port}/", timeout=5)
        # serve, demo and what they started (uvicorn, Ray's helpers) are gone, not reparented to init
        deadline = time.monotonic() + 30
        while (left := _session_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, [open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:200] for p in left]
    finally:
        _stop(proc)
