"""`omnidit calibrate-cache` and `omnidit generate --cache` as a user runs them."""

from __future__ import annotations

import json

from test_cli import run
from tiny_models import make_tiny_model_dir

from omnidit.generation import read_video


def test_calibrate_then_generate_with_cache(tmp_path):
    model = make_tiny_model_dir(tmp_path / "m", sampling={"steps": 4})
    r = run("generate", "a red circle", "--model", str(model), "--cache", "teacache", "--out", str(tmp_path / "a.png"))
    assert r.returncode == 2 and "calibrate-cache" in r.stderr and "Traceback" not in r.stderr
    r = run("calibrate-cache", "--model", str(model))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["path"] == str(model / "cache.json") and summary["steps"] == 4
    for spec, name in (("teacache:0.2", "t.png"), ("magcache", "m.png"), ("none", "n.png")):
        r = run("generate", "a red circle", "--model", str(model), "--cache", spec, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        assert read_video(tmp_path / name).shape == (1, 32, 32, 3)


def test_bad_cache_spec_exits_2_naming_the_values(tmp_path):
    model = make_tiny_model_dir(tmp_path / "m")
    r = run("generate", "a red circle", "--model", str(model), "--cache", "fbcache:lots", "--out",
            str(tmp_path / "x.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cache" in r.stderr and "[0, 10]" in r.stderr
    r = run("calibrate-cache", "--model", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr
