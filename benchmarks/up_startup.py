"""`omnidit up` startup with one served model vs several, on this machine, in one run.

Each round starts `omnidit up` as a user would (its own session, a fresh data dir), times until it
prints the demo URL (the service is healthy: every model's generator answers) and until the demo's
page answers, checks /v1/models, then stops it with SIGTERM. Configurations alternate round by
round so a busy machine slows both alike; the table gives each one's median and the ratio to the
first configuration.

    python benchmarks/up_startup.py                                   # shapes-turbo alone vs the default
    python benchmarks/up_startup.py --rounds 5 --config "shapes-turbo" --config "shapes-turbo,shapes"
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read()
    except OSError:
        return None


def one_round(models: list[str], work: Path, timeout: float) -> dict:
    api, demo = _port(), _port()
    cmd = [sys.executable, "-m", "omnidit", "up", "--port", str(api), "--demo-port", str(demo),
           "--data-dir", str(work / "data")] + [a for m in models for a in ("--model", m)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", GRADIO_ANALYTICS_ENABLED="False")
    log = work / "up.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while f"demo: http://127.0.0.1:{demo}" not in log.read_text():
            if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"omnidit up did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        healthy = time.perf_counter() - t0
        while _get(f"http://127.0.0.1:{demo}/") is None:
            time.sleep(0.1)
        page = time.perf_counter() - t0
        served = [m["id"] for m in json.loads(_get(f"http://127.0.0.1:{api}/v1/models"))["data"]]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # what supervisors send; `up` stops both children
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return {"healthy_s": healthy, "demo_s": page, "served": served}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None,
                    help="comma-separated models for one configuration (repeat; default: shapes-turbo, then "
                         "up's default of shapes-turbo,shapes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    configs = [c.split(",") for c in (args.config or ["shapes-turbo", "shapes-turbo,shapes"])]
    rows: dict[str, list[dict]] = {",".join(c): [] for c in configs}
    for r in range(args.rounds):
        for models in configs:
            with tempfile.TemporaryDirectory(prefix="omnidit-up-bench-") as d:
                res = one_round(models, Path(d), args.timeout)
            assert res["served"] == [Path(m).name for m in models], res
            rows[",".join(models)].append(res)
            print(f"round {r + 1} {','.join(models)}: healthy {res['healthy_s']:.1f} s, "
                  f"demo page {res['demo_s']:.1f} s", flush=True)
    ref = None
    print(f"\n| models | healthy (median of {args.rounds}) | demo page answers | ratio (healthy) |\n|---|---|---|---|")
    for name, rs in rows.items():
        healthy = statistics.median(r["healthy_s"] for r in rs)
        page = statistics.median(r["demo_s"] for r in rs)
        ref = ref or healthy
        print(f"| `{name}` | {healthy:.1f} s | {page:.1f} s | {healthy / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
