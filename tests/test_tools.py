"""The diagnosis tools under tools/ run end to end on a tiny model and print what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.tiny_models import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]


def test_shape_diagnosis_reads_shapes_four_ways(tmp_path):
    model = make_tiny_model_dir(tmp_path / "tiny")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "shape_diagnosis.py"), "--model", str(model),
                          "--n", "6", "--probe-n", "64"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^(rec|gen|probe_enc|probe_gen)\s+(\S+)", out.stdout, re.M)}
    assert set(rows) == {"rec", "gen", "probe_enc", "probe_gen"}, out.stdout
    for name in ("rec", "probe_enc"):  # every scene is reconstructed and probed: a percentage each
        assert re.fullmatch(r"\d+\.\d%", rows[name]) and 0 <= float(rows[name][:-1]) <= 100, out.stdout
    assert re.search(r"\d+ scenes, up to 1 objects", out.stdout)
