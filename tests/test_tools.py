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


def test_decoder_check_scores_what_omnidit_eval_scores(tmp_path):
    """Its first row (the model's own VAE on eval's prompts and seeds) is `omnidit eval`'s score;
    the latents are sampled once and reused by a second run."""
    import json

    from omnidit.pipeline import Pipeline
    from omnidit.shapes.adherence import VIDEO_FRAMES, eval_pipeline, eval_prompts

    model = make_tiny_model_dir(tmp_path / "tiny")
    argv = [sys.executable, str(ROOT / "tools" / "decoder_check.py"), "--model", str(model), "--n", "3",
            "--videos", "1", "--seed", "5", "--size", "32", "--cache", str(tmp_path / "cache"),
            "--json", str(tmp_path / "out.json")]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sampling 3 images" in out.stderr and len(list((tmp_path / "cache").iterdir())) == 2
    assert "small squares read as" in out.stdout
    got = json.loads((tmp_path / "out.json").read_text())
    own = got[str(model / "vae")]
    pipe = Pipeline.from_pretrained(model, device="cpu")
    for kind, n, frames, seed in (("images", 3, 1, 5), ("videos", 1, VIDEO_FRAMES, 6)):
        want = eval_pipeline(pipe, eval_prompts(n, seed=seed, video=frames > 1), frames=frames, seed=5,
                             height=32, width=32)["scores"]
        assert {k: round(v, 4) for k, v in own[kind].items()} == want, kind
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0 and "sampling" not in out.stderr  # reused the kept latents


def test_sampling_sweep_rows_are_eval_rows_under_the_overrides(tmp_path):
    """Its rows are `omnidit eval`'s scores of the model with the row's sampling settings, and the
    pipeline's own settings are restored after each row."""
    sys.path.insert(0, str(ROOT / "tools"))
    from sampling_sweep import parse_try, score_setting

    from omnidit.pipeline import Pipeline
    from omnidit.shapes.adherence import eval_pipeline, eval_prompts

    model = make_tiny_model_dir(tmp_path / "tiny")
    pipe = Pipeline.from_pretrained(model, device="cpu")
    shipped = pipe.config
    for setting, call in (({}, {}), ({"steps": 2}, {"steps": 2})):
        got = score_setting(pipe, setting, n=3, videos=0, seed=5, size=32)["images"]
        want = eval_pipeline(pipe, eval_prompts(3, seed=5, video=False), seed=5, height=32, width=32, **call)["scores"]
        assert {k: round(v, 4) for k, v in got.items()} == want, setting
    other = score_setting(pipe, {"shift": 3.0, "sampler": "x0_renoise"}, n=3, videos=0, seed=5, size=32)
    assert set(other) == {"images"} and pipe.config is shipped

    assert parse_try("shift=1.5,sampler=euler") == {"shift": 1.5, "sampler": "euler"}
    for bad, named in (("shfit=2", "shfit=2"), ("steps=four", "steps must be an integer"), ("shift", "KEY=VALUE")):
        try:
            parse_try(bad)
        except ValueError as e:
            assert named in str(e), e
        else:
            raise AssertionError(f"{bad!r} accepted")
    for bad, named in (("sampler=heun", "sampler 'heun' not one of"), ("shift=0", "shift")):
        out = subprocess.run([sys.executable, str(ROOT / "tools" / "sampling_sweep.py"), "--model", str(model),
                              "--try", bad], capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert "sampled" not in out.stderr  # refused before sampling anything
