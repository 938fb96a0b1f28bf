"""benchmarks/gpu_suite.sh preflighted on CPU at tiny sizes: every row runs and lands in the JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_gpu_suite_preflight_on_cpu(tmp_path):
    out = tmp_path / "suite"
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--tiny"], capture_output=True,
                       text=True, timeout=580, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    suite = json.loads((out / "suite.json").read_text())
    rows = {row["row"]: row for row in suite["rows"]}
    assert not [row for row in rows.values() if "error" in row], rows
    for name in ("dit/ours/sdpa", "dit/diffusers", "dit/ours/fp8", "cache/none", "cache/fbcache",
                 "vae/ours-tiled", "vae/diffusers-tiled"):
        assert rows[name].get("s", rows[name].get("s_per_step", 0)) > 0 and rows[name]["peak_gb"] > 0, name
    assert rows["dit/diffusers"]["rel_diff_vs_ours"] < 1e-5  # the same weights on both sides
    assert rows["dit/ours/fp8"]["bytes_vs_unquantised"] < 0.6
    assert "dit/ours/flash_attn" in rows and "dit/ours/xformers" in rows  # measured or skipped, never absent
    assert (out / "suite.log").read_text().count('"row"') == len(rows)
