"""`omnidit batch`: prompt lines, the manifest, and whole jobs on a local Ray (one per module).

The job tests use the tiny model (32x32, 3 steps). One test starts a real job as a subprocess,
kills it after its first rows, and checks that a rerun finishes without redoing finished ids
and writes the same bytes as an uninterrupted job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import make_tiny_model_dir
from tolerances import assert_frames_close

from omnidit.batch import BatchConfig, parse_line, parse_prompts, read_manifest, run_batch
from omnidit.batch.lines import BatchItem, LineError, ParsedPrompts, derived_seed
from omnidit.batch.manifest import JobLocked, ManifestWriter
from omnidit.batch.plan import chunk_items, plan_job
from omnidit.generation import read_video

REPO = Path(__file__).resolve().parents[1]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def ok_rows(out: Path) -> list[dict]:
    return [r for r in read_manifest(out / "manifest.jsonl") if r["status"] == "ok"]


# ---- lines -------------------------------------------------------------------------------------


def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    lines = [
        {"id": "a", "prompt": "a red circle"},  # 1 ok
        '{"prompt": "unterminated"',  # 2 invalid JSON
        {"id": "b"},  # 3 no prompt
        {"id": "c", "prompt": "x", "size": "32by32"},  # 4 bad size
        {"id": "d", "prompt": "x", "frames": 4},  # 5 frames not 1 mod 4
        {"id": "e", "prompt": "x", "colour": "red"},  # 6 unknown key
        {"id": "a", "prompt": "again"},  # 7 duplicate id
        {"id": "../x", "prompt": "x"},  # 8 path characters
        {"id": "sub/x", "prompt": "x"},  # 9
        {"id": ".hidden", "prompt": "x"},  # 10
        {"id": "f", "prompt": "x", "seed": -1},  # 11
        {"id": "g", "prompt": "x", "steps": True},  # 12 a bool is not a step count
        "[1, 2]",  # 13 not an object
        "",  # 14 blank: skipped, not an error
        {"id": "h", "prompt": "x", "frames": 9, "size": "48x32", "seed": 5, "steps": 2, "guidance": 1,
         "negative_prompt": "blur"},  # 15 ok
    ]
    parsed = parse_prompts(write_lines(tmp_path / "p.jsonl", lines), temporal_ratio=4)
    assert [it.id for it in parsed.items] == ["a", "h"]
    h = parsed.items[1]
    assert (h.line, h.frames, h.width, h.height, h.seed, h.steps, h.guidance, h.negative_prompt, h.filename) == (
        15, 9, 48, 32, 5, 2, 1.0, "blur", "h.mp4")
    errs = {e.line: e.message for e in parsed.errors}
    assert sorted(errs) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    for line, needle in [(2, "invalid JSON"), (3, "prompt"), (4, "size"), (5, "frames"), (6, "colour"),
                         (7, "duplicate id 'a' (first on line 1)"), (8, "id must match"), (9, "id must match"),
                         (10, "id must match"), (11, "seed"), (12, "steps"), (13, "JSON object")]:
        assert errs[line].startswith(f"line {line}: ") and needle in errs[line], errs[line]


def test_missing_id_and_seed_are_derived_stably():
    a = parse_line('{"prompt": "a red circle", "steps": 2}', 1)
    b = parse_line('{ "steps":2,  "prompt":"a red circle" }', 40)  # same content, other spacing/order/line
    c = parse_line('{"prompt": "a red circle", "steps": 3}', 1)
    assert isinstance(a, BatchItem) and isinstance(b, BatchItem) and isinstance(c, BatchItem)
    assert a.id == b.id != c.id and a.id.startswith("auto-")
    assert a.seed == b.seed == derived_seed(a.id) and 0 <= a.seed < 2**31
    assert parse_line('{"id": "x", "prompt": "p"}', 1).seed == parse_line('{"id": "x", "prompt": "q"}', 2).seed
    assert a.fingerprint("m") == b.fingerprint("m") != a.fingerprint("other-model")
    assert isinstance(parse_line('{"id": "", "prompt": "p"}', 1), LineError)


# ---- manifest and plan -------------------------------------------------------------------------


def test_manifest_tolerates_a_truncated_last_line_and_locks(tmp_path):
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path) as w:
        w.write({"id": "a", "status": "ok"})
        with pytest.raises(JobLocked):
            ManifestWriter(path)
    with open(path, "ab") as f:
        f.write(b'{"id": "b", "status": "o')  # a job killed mid-row
    assert read_manifest(path) == [{"id": "a", "status": "ok"}]
    with ManifestWriter(path) as w:  # cuts the partial row before appending
        w.write({"id": "c", "status": "ok"})
    assert path.read_text() == '{"id": "a", "status": "ok"}\n{"id": "c", "status": "ok"}\n'


def test_plan_groups_chunks_and_skips_finished(tmp_path):
    items = [parse_line(json.dumps({"id": f"i{n}", "prompt": "p", "size": s}), n)
             for n, s in enumerate(["32x32", "48x32", "32x32", "32x32", "48x32"], start=1)]
    assert [[it.id for it in c] for c in chunk_items(items, 2)] == [["i1", "i3"], ["i4"], ["i2", "i5"]]
    (tmp_path / "i1.png").write_bytes(b"x")
    (tmp_path / "i2.png").write_bytes(b"x")
    (tmp_path / "i5.png").write_bytes(b"x")
    rows = [{"id": i, "status": "ok", "path": f"{i}.png", "key": items[n].fingerprint("m")}
            for n, i in [(0, "i1"), (1, "i2"), (4, "i5")]]
    rows.append({"id": "i4", "status": "ok", "path": "i4.png", "key": items[3].fingerprint("m")})  # file gone
    parsed = ParsedPrompts(items, [])
    plan = plan_job(parsed, rows, tmp_path, model="m", batch_size=2)
    assert plan.todo == {"i3", "i4"} and plan.skipped == 3
    # i1's chunk is regenerated whole (same company, same bytes for i3); the finished chunk is dropped.
    assert [[it.id for it in c] for c in plan.chunks] == [["i1", "i3"], ["i4"]]
    assert plan_job(parsed, rows, tmp_path, model="other", batch_size=2).skipped == 0  # new model: redo


def test_resuming_with_other_weights_or_adapters_regenerates(tmp_path):
    """The job-wide settings that change outputs (weights, the --lora set and its file) are in the
    fingerprint: resuming a folder with other ones redoes items instead of mixing outputs."""
    from omnidit.batch.runner import BatchConfig, job_variant

    item = parse_line(json.dumps({"id": "a", "prompt": "p"}), 1)
    (tmp_path / "a.png").write_bytes(b"x")
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"one")

    def cfg(**kw):
        return BatchConfig(prompts=tmp_path / "p.jsonl", out=tmp_path, **kw)

    def skipped(first: BatchConfig, then: BatchConfig) -> int:
        rows = [{"id": "a", "status": "ok", "path": "a.png", "key": item.fingerprint("m", job_variant(first))}]
        return plan_job(ParsedPrompts([item], []), rows, tmp_path, model="m", batch_size=1,
                        variant=job_variant(then)).skipped

    assert job_variant(cfg()) == {}  # defaults: the fingerprints of older jobs are unchanged
    assert item.fingerprint("m", job_variant(cfg())) == item.fingerprint("m")
    assert skipped(cfg(), cfg()) == 1
    assert skipped(cfg(), cfg(weights="fp8")) == 0
    with_lora = cfg(loras={"style": [str(lora), 1.0]})
    assert skipped(cfg(), with_lora) == 0
    assert skipped(with_lora, cfg(loras={"style": [str(lora), 0.5]})) == 0
    before = job_variant(with_lora)
    lora.write_bytes(b"two")  # the same name, retrained
    assert job_variant(with_lora) != before


# ---- jobs on Ray -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # The re-noising sampler (the shipped default's): a line's noise must not depend on its chunk.
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), sampling={"sampler": "x0_renoise"}))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from omnidit.batch.runner import start_ray

    start_ray(None, "cpu", 2)
    yield
    ray.shutdown()


# 30 plain lines keep the killed job busy for a while after its first rows, even on a fast machine.
JOB_LINES = [
    {"id": "toobig", "prompt": "a red circle", "size": "128x32"},  # line 1: rejected by Pipeline.check
    *({"id": f"k{i:02d}", "prompt": f"shape {i} on a {'black' if i % 2 else 'white'} background"}
      for i in range(30)),  # lines 2-31
    {"prompt": "a purple circle, take 1"}, {"prompt": "a purple circle, take 2"},  # lines 32-33: derived ids
    {"id": "clip", "prompt": "a green triangle moving left", "frames": 5, "seed": 3},  # line 34
    {"id": "wide", "prompt": "a yellow star", "size": "48x32", "steps": 2, "negative_prompt": "blur"},  # 35
    '{"prompt": oops}',  # line 36: invalid JSON
    {"id": "k00", "prompt": "duplicate"},  # line 37
]
N_OK = 34  # 30 + 2 + clip + wide


@pytest.fixture(scope="module")
def job(tmp_path_factory, model, ray_local):
    """The job run once, uninterrupted, with one actor; the reference the other tests compare with."""
    d = tmp_path_factory.mktemp("job")
    prompts = write_lines(d / "p.jsonl", JOB_LINES)
    out = d / "out"
    out.mkdir()
    (out / ".k03.k2j4_x9a.png").write_bytes(b"half-written by a killed job")
    summary = run_batch(BatchConfig(prompts=prompts, out=out, model=model, concurrency=1, batch_size=2,
                                    progress=False))
    return prompts, out, summary


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_job_end_to_end(job):
    _, out, s = job
    assert (s.items, s.ok, s.failed, s.rejected, s.skipped) == (N_OK + 1, N_OK, 1, 2, 0) and not s.complete
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == N_OK + 3
    by_id = {r["id"]: r for r in rows if r["stage"] == "generate"}
    for r in by_id.values():
        if r["status"] == "ok":
            frames = read_video(out / r["path"])
            p = r["params"]
            assert frames.shape == (p["frames"], p["height"], p["width"], 3) and r["seconds"] > 0
            assert frames.std() > 1  # a picture, not a blank
    assert sorted(p.name for p in out.iterdir()) == sorted([r["path"] for r in by_id.values() if r["path"]]
                                                           + ["manifest.jsonl"])  # stale temp file gone
    assert by_id["k03"]["line"] == 5 and by_id["k03"]["path"] == "k03.png"
    assert by_id["clip"]["path"] == "clip.mp4" and by_id["clip"]["seed"] == 3
    assert by_id["wide"]["params"] == {"frames": 1, "width": 48, "height": 32, "steps": 2, "guidance": 3.0,
                                       "negative_prompt": "blur"}
    auto = sorted((r["line"], i) for i, r in by_id.items() if i.startswith("auto-"))
    assert [ln for ln, _ in auto] == [32, 33]
    assert by_id["toobig"]["status"] == "error" and by_id["toobig"]["line"] == 1
    assert "width" in by_id["toobig"]["error"] and by_id["toobig"]["path"] is None
    parse_errs = sorted((r["line"], r["error"]) for r in rows if r["stage"] == "parse")
    assert [ln for ln, _ in parse_errs] == [36, 37] and "invalid JSON" in parse_errs[0][1]
    assert "duplicate id 'k00'" in parse_errs[1][1]
    pngs = sorted(out.glob("*.png"))
    assert not np.array_equal(read_video(pngs[0]), read_video(pngs[1]))  # lines differ, pictures too
    # A line's output is its own: the same as that line generated alone, whatever shared its chunk.
    from omnidit import Pipeline

    pipe = Pipeline.from_pretrained(by_id["k00"]["model"], device="cpu")
    for item_id in ("k00", "k01", "k02"):
        r = by_id[item_id]
        alone = pipe.generate(r["prompt"], seed=r["seed"], **r["params"])
        assert_frames_close(read_video(out / r["path"]), alone.frames)


def _batch_cmd() -> list[str]:
    return ["-m", "omnidit", "batch"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_job_resumes_without_redoing_work_and_same_bytes(tmp_path, model, job):
    """Killed (concurrency 1) + resumed (concurrency 2) == the uninterrupted job (concurrency 1), byte for byte."""
    prompts, ref, _ = job
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, *_batch_cmd(), str(prompts), "--out", str(out), "--model", model, "--concurrency", "1",
         "--batch-size", "2", "--device", "cpu"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while len(ok_rows(out)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the job wrote no rows in time"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
        proc.stderr.close()
    done = {r["id"]: r for r in ok_rows(out)}
    assert 3 <= len(done) < N_OK, len(done)
    before = {i: os.stat(out / r["path"]) for i, r in done.items()}
    toobig_before = sum(r["id"] == "toobig" for r in read_manifest(out / "manifest.jsonl"))
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b'{"id": "k29", "status": "ok", "pa')  # as if killed mid-row

    s = run_batch(BatchConfig(prompts=prompts, out=out, model=model, concurrency=2, batch_size=2, progress=False))
    # finished ids skipped, the pipeline error retried, the two bad lines not reported again
    assert (s.skipped, s.ok, s.failed, s.rejected, s.rejected_before) == (len(done), N_OK - len(done), 1, 0, 2)
    for i, st in before.items():  # finished files untouched: same inode, same mtime
        now = os.stat(out / done[i]["path"])
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), i
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind
    raw = (out / "manifest.jsonl").read_bytes()
    assert raw.endswith(b"\n") and all(json.loads(ln) for ln in raw.splitlines())
    rows = read_manifest(out / "manifest.jsonl")
    oks = [r["id"] for r in rows if r["status"] == "ok"]
    assert len(oks) == len(set(oks)) == N_OK  # each id generated exactly once over both runs
    assert sum(r["id"] == "toobig" for r in rows) == toobig_before + 1
    assert sorted(r["line"] for r in rows if r["stage"] == "parse") == [36, 37]

    names = sorted(p.name for p in ref.iterdir() if p.suffix in (".png", ".mp4"))
    assert len(names) == N_OK and names == sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".mp4"))
    for name in names:
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name


# ---- command line errors -------------------------------------------------------------------------


@pytest.mark.parametrize("make_args,needle", [
    (lambda d: [str(d / "missing.jsonl"), "--out", str(d / "o")], "missing.jsonl"),
    (lambda d: [str(d / "p.jsonl"), "--out", str(d / "p.jsonl")], "--out"),
    (lambda d: [str(d / "p.jsonl"), "--out", str(d / "o"), "--device", "tpu"], "--device"),
    (lambda d: [str(d / "p.jsonl"), "--out", str(d / "o"), "--model", str(d / "nope")], "nope"),
])
def test_user_errors_exit_2_in_one_line(tmp_path, capsys, make_args, needle):
    from omnidit.cli import main

    write_lines(tmp_path / "p.jsonl", [{"prompt": "a red circle"}])
    assert main(["batch", *make_args(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_concurrency_exits_2(tmp_path, capsys, value):
    from omnidit.cli import main

    write_lines(tmp_path / "p.jsonl", [{"prompt": "a red circle"}])
    with pytest.raises(SystemExit) as e:
        main(["batch", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"), "--concurrency", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--concurrency" in err[0], err
