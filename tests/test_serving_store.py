"""Job store, output files and the job runner, without Ray or a model (fast).

The store tests run on both back ends: SQLite, and a real PostgreSQL server started for the session
(tests/pg_server.py; skipped, with the reason, where none can be started)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from omnidit.sampling import Cancelled  # noqa: E402
from omnidit.serving.files import OutputDir, new_video_id, write_atomic  # noqa: E402
from omnidit.serving.jobs import IdempotencyConflict, QueueFull, SQLiteJobStore, open_store  # noqa: E402
from omnidit.serving.runner import DeviceGate, JobRunner  # noqa: E402
from omnidit.serving.settings import ServeSettings, parse_duration  # noqa: E402

PARAMS = {"width": 32, "height": 32, "frames": 5, "fps": 8, "steps": 3, "guidance": 3.0,
          "negative_prompt": None, "seed": 7}


@pytest.fixture(scope="session")
def pg_url():
    import pg_server

    reason = pg_server.unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL job-store tests skipped: {reason}")
    with pg_server.postgres_server() as url:
        yield url


_db_count = [0]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty job store URL on each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    import pg_server

    _db_count[0] += 1
    return pg_server.fresh_database(request.getfixturevalue("pg_url"), f"jobs_{os.getpid()}_{_db_count[0]}")


@pytest.fixture
def store(store_url):
    s = open_store(store_url, retention_s=3600, max_attempts=2)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = SQLiteJobStore(tmp_path / "jobs.db", retention_s=3600, max_attempts=2)
    yield s
    s.close()


def test_claim_by_model_and_a_reaped_job_keeps_its_model(store):
    """Several models: each worker claims its model's jobs; the first (default) also rows naming none."""
    b = store.create("p", PARAMS, model="b", now=1.0)[0]
    old = store.create("p", PARAMS, now=2.0)[0]  # no model: a row from before several models
    assert store.claim("w-a", 10, now=3.0, model="a") is None  # not the default: neither b's nor the old row
    got = store.claim("w-a", 10, now=3.0, model="a", default=True)
    assert got.id == old.id and got.model is None
    lease = store.claim("w-b", 10, now=3.0, model="b")
    assert lease.id == b.id and lease.model == "b"
    # both workers die; after the leases each job is queued again, still only its model's
    assert store.claim("w-a2", 10, now=20.0, model="a", default=True).id == old.id
    assert store.claim("w-a3", 10, now=20.0, model="a", default=True) is None
    again = store.claim("w-b2", 10, now=20.0, model="b")
    assert again.id == b.id and again.attempts == 2
    # a model no longer served: its queued jobs fail instead of waiting; unnamed rows stay the default's
    gone = store.create("p", PARAMS, model="gone", now=21.0)[0]
    unnamed = store.create("p", PARAMS, now=21.0)[0]
    assert store.fail_unserved(["a", "b"], now=22.0) == 1
    assert store.get(gone.id).status == "failed" and store.get(gone.id).error["code"] == "model_not_found"
    assert store.get(unnamed.id).status == "queued"


def test_a_store_from_before_several_models_gains_the_model_column(store, store_url):
    job = store.create("p", PARAMS)[0]
    with store._tx() as q:  # what an older release created: no model column
        q("ALTER TABLE jobs DROP COLUMN model", ())
    reopened = open_store(store_url, retention_s=3600)
    try:
        got = reopened.claim("w", 10, model="tiny-a", default=True)
        assert got.id == job.id and got.model is None
        assert reopened.create("p", PARAMS, model="tiny-b")[0].model == "tiny-b"
    finally:
        reopened.close()


def test_wal_mode_and_durable_before_return(sqlite_store, tmp_path):
    store = sqlite_store
    assert store.journal_mode == "wal"
    job, created = store.create("a red circle", PARAMS)
    assert created and job.status == "queued" and job.progress == 0 and job.attempts == 0
    # Another connection (another process in production) sees the committed row at once.
    other = sqlite3.connect(tmp_path / "jobs.db")
    assert other.execute("SELECT status FROM jobs WHERE id = ?", (job.id,)).fetchone() == ("queued",)
    other.close()
    assert job.expires_at == pytest.approx(job.created_at + 3600)


def test_idempotency_key(store):
    a, created_a = store.create("p", PARAMS, idempotency_key="k1", request_hash="h1")
    b, created_b = store.create("p", PARAMS, idempotency_key="k1", request_hash="h1")
    assert created_a and not created_b and a.id == b.id
    with pytest.raises(IdempotencyConflict):
        store.create("other", PARAMS, idempotency_key="k1", request_hash="h2")
    c, created_c = store.create("p", PARAMS, idempotency_key="k2", request_hash="h1")
    assert created_c and c.id != a.id
    # Deleting the job frees its key.
    store.delete(a.id)
    d, created_d = store.create("p", PARAMS, idempotency_key="k1", request_hash="h1")
    assert created_d and d.id != a.id


def test_queue_bound(store):
    for _ in range(3):
        store.create("p", PARAMS, max_queued=3)
    with pytest.raises(QueueFull):
        store.create("p", PARAMS, max_queued=3)
    store.claim("w", 60)  # one leaves the queue -> room again
    store.create("p", PARAMS, max_queued=3)


def test_claim_fifo_lease_and_heartbeat(store):
    first, _ = store.create("first", PARAMS, now=100.0)
    second, _ = store.create("second", PARAMS, now=101.0)
    job = store.claim("w1", lease_s=10, now=200.0)
    assert job.id == first.id and job.status == "in_progress" and job.attempts == 1
    assert job.lease_owner == "w1" and job.lease_expires == 210.0 and job.started_at == 200.0
    assert store.heartbeat(job.id, "w1", 10, progress=40, now=205.0)
    assert store.get(job.id).lease_expires == 215.0 and store.get(job.id).progress == 40
    assert not store.heartbeat(job.id, "someone-else", 10)
    assert store.claim("w2", 10, now=206.0).id == second.id
    assert store.claim("w3", 10, now=207.0) is None


def test_concurrent_claims_never_share_a_job(store_url):
    setup = open_store(store_url, retention_s=60)
    ids = {setup.create(f"p{i}", PARAMS)[0].id for i in range(30)}
    claimed: list[str] = []

    def worker(name):
        s = open_store(store_url, retention_s=60)  # its own connection, like another process
        while (job := s.claim(name, 60)) is not None:
            claimed.append(job.id)
        s.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job exactly once
    setup.close()


def test_dead_lease_is_requeued_then_failed_after_max_attempts(store):
    job, _ = store.create("p", PARAMS)
    store.claim("dead-1", lease_s=5, now=1000.0)
    assert store.reap(now=1004.0) == {"failed": 0, "requeued": 0}  # lease still valid
    assert store.reap(now=1006.0) == {"failed": 0, "requeued": 1}
    assert store.get(job.id).status == "queued"
    again = store.claim("dead-2", lease_s=5, now=1010.0)
    assert again.id == job.id and again.attempts == 2
    # A stale worker cannot finish a job it lost.
    assert not store.complete(job.id, "dead-1", "x.mp4")
    # max_attempts=2: the second dead lease fails the job with a clear error, never stuck in_progress.
    store.claim("nobody", lease_s=5, now=1020.0)
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error["code"] == "worker_lost"
    assert "2 attempts" in failed.error["message"] and failed.finished_at == 1020.0


def test_release_requeues_without_counting(store):
    job, _ = store.create("p", PARAMS)
    store.claim("w", 60)
    assert store.release(job.id, "w")
    j = store.get(job.id)
    assert j.status == "queued" and j.attempts == 0 and j.lease_owner is None


def test_cancel_and_complete_are_exclusive(store):
    job, _ = store.create("p", PARAMS)
    store.claim("w", 60)
    cancelled = store.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.lease_owner is None
    assert not store.heartbeat(job.id, "w", 60, progress=50)  # the worker learns at its next step
    assert not store.complete(job.id, "w", "out.mp4")
    assert store.get(job.id).status == "cancelled"
    # cancel on a finished job changes nothing
    assert store.cancel(job.id).status == "cancelled"


def test_expiry_deletes_only_finished_jobs(store):
    done, _ = store.create("done", PARAMS, now=0.0)
    waiting, _ = store.create("waiting", PARAMS, now=0.5)
    store.claim("w", 60, now=1.0)
    store.complete(done.id, "w", "x.mp4", now=2.0)
    assert store.get(done.id).expires_at == 2.0 + 3600
    assert store.delete_expired(now=3000.0) == []
    gone = store.delete_expired(now=3603.0)
    assert [j.id for j in gone] == [done.id]
    assert store.get(done.id) is None and store.get(waiting.id) is not None  # never expire queued work


def test_list_pages(store):
    ids = [store.create(f"p{i}", PARAMS, now=float(i))[0].id for i in range(5)]
    page, more = store.list(limit=2)
    assert [j.id for j in page] == ids[::-1][:2] and more
    page2, more2 = store.list(limit=2, after=page[-1].id)
    assert [j.id for j in page2] == ids[::-1][2:4] and more2
    page3, more3 = store.list(limit=2, after=page2[-1].id)
    assert [j.id for j in page3] == [ids[0]] and not more3
    asc, _ = store.list(limit=10, order="asc")
    assert [j.id for j in asc] == ids
    with pytest.raises(KeyError):
        store.list(after=new_video_id())


def test_stats_accumulate(store):
    store.add_stats({"video_steps": 3, "video_step_seconds": 0.5})
    store.add_stats({"video_steps": 2, "video_step_seconds": 0.25})
    assert store.stats() == {"video_steps": 5.0, "video_step_seconds": 0.75}


def test_open_store_urls(tmp_path, monkeypatch):
    s = open_store(f"sqlite:///{tmp_path / 'a.db'}", retention_s=1)
    assert isinstance(s, SQLiteJobStore) and s.path == tmp_path / "a.db"
    s.close()
    with pytest.raises(ValueError, match="job_store"):
        open_store("mysql://x", retention_s=1)
    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)  # as if not installed
    with pytest.raises(RuntimeError, match="psycopg is not installed"):
        open_store("postgresql://u@h/db", retention_s=1)


# -- files --------------------------------------------------------------------------------------

def test_outputs_only_by_id(tmp_path):
    out = OutputDir(tmp_path)
    jid = new_video_id()
    assert out.video_path(jid) == tmp_path.resolve() / "videos" / f"{jid}.mp4"
    for bad in ("../../etc/passwd", "video_" + "0" * 31, jid + "/x", "/abs", "video_" + "G" * 32):
        with pytest.raises(ValueError):
            out.video_path(bad)
        with pytest.raises(ValueError):
            out.image_path(bad)


def test_write_atomic_all_or_nothing(tmp_path, monkeypatch):
    p = write_atomic(tmp_path / "a.bin", b"hello")
    assert p.read_bytes() == b"hello" and os.listdir(tmp_path) == ["a.bin"]

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "b.bin", b"x" * 1000)
    assert os.listdir(tmp_path) == ["a.bin"]  # no partial file, no temp left behind


def test_settings_validation():
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("2d") == 172800
    assert parse_duration(5) == 5.0
    for bad in ("x", "-1h", "0", "5w", True):
        with pytest.raises(ValueError, match="retention"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="unknown serve settings"):
        ServeSettings.from_dict({"modle": "x"})
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeSettings(max_batch_size=0)
    assert ServeSettings.from_dict({"retention": "1h"}).retention_s == 3600


# -- runner -------------------------------------------------------------------------------------

class FakeGeneration:
    frames = [__import__("numpy").zeros((8, 8, 3), "uint8")]  # the runner saves frame 0 as the thumbnail

    def __init__(self, data: bytes):
        self.data = data

    def label(self):  # no AIGC label metadata
        return None

    def save(self, path):
        write_atomic(Path(path), self.data)
        return path


def _runner(store, tmp_path, generate, **kw):
    return JobRunner(store, OutputDir(tmp_path / "data"), generate, lease_s=kw.pop("lease_s", 30), poll_s=0.01,
                     owner="test-worker", **kw)


def test_runner_completes_with_progress_per_step(store, tmp_path):
    job, _ = store.create("p", PARAMS)
    seen = []

    def generate(j, callback):
        for step in range(1, 5):
            callback(step, 4, None)
            seen.append(store.get(j.id).progress)
        return FakeGeneration(b"mp4-bytes")

    final = _runner(store, tmp_path, generate).run_one()
    assert seen == [25, 50, 75, 99]  # written every step; 100 only once the output exists
    assert final.status == "completed" and final.progress == 100 and final.output == f"{job.id}.mp4"
    assert (tmp_path / "data" / "videos" / f"{job.id}.mp4").read_bytes() == b"mp4-bytes"
    assert store.stats()["video_steps"] == 3


def test_runner_cancel_stops_within_one_step(store, tmp_path):
    job, _ = store.create("p", PARAMS)
    steps_after_cancel = []

    def generate(j, callback):
        for step in range(1, 1001):
            if step == 3:
                store.cancel(j.id)  # DELETE arrives while step 3 runs
            if store.get(j.id).status == "cancelled":
                steps_after_cancel.append(step)
            callback(step, 1000, None)
        return FakeGeneration(b"never")

    final = _runner(store, tmp_path, generate).run_one()
    assert final.status == "cancelled"
    assert steps_after_cancel == [3]  # the step in flight finishes, the next one never starts
    assert not (tmp_path / "data" / "videos" / f"{job.id}.mp4").exists()


def test_runner_stop_releases_job(store, tmp_path):
    job, _ = store.create("p", PARAMS)
    runner = _runner(store, tmp_path, None)

    def generate(j, callback):
        callback(1, 10, None)
        runner._stop.set()  # a graceful shutdown begins
        callback(2, 10, None)
        raise AssertionError("not reached")

    runner.generate = generate
    final = runner.run_one()
    assert final.status == "queued" and final.attempts == 0


def test_runner_failure_is_recorded(store, tmp_path):
    store.create("p", PARAMS)

    def generate(j, callback):
        raise RuntimeError("CUDA out of memory")

    final = _runner(store, tmp_path, generate).run_one()
    assert final.status == "failed" and final.error == {"code": "generation_error",
                                                         "message": "RuntimeError: CUDA out of memory"}


def test_runner_heartbeat_keeps_a_slow_step_alive(store, tmp_path):
    job, _ = store.create("p", PARAMS)

    def generate(j, callback):
        time.sleep(1.0)  # one long step (or a long VAE decode): no callback, only the heartbeat thread
        assert store.reap() == {"failed": 0, "requeued": 0}
        return FakeGeneration(b"ok")

    assert _runner(store, tmp_path, generate, lease_s=0.6).run_one().status == "completed"


def test_device_gate_lets_images_in_between_video_steps():
    gate, order = DeviceGate(), []
    image_waiting = threading.Event()

    def video():
        with gate.video():
            for step in range(4):
                order.append(f"v{step}")
                if step == 1:
                    threading.Thread(target=image).start()
                    while not gate._images_waiting:
                        time.sleep(0.001)
                gate.yield_to_images()

    def image():
        image_waiting.set()
        with gate.image():
            order.append("img")

    t = threading.Thread(target=video)
    t.start()
    t.join(5)
    assert order == ["v0", "v1", "img", "v2", "v3"]


def test_cancelled_is_what_samplers_propagate():
    from omnidit.sampling import sample_euler
    import torch

    def cb(step, total, x):
        if step == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        sample_euler(lambda x, s: torch.zeros_like(x), torch.zeros(1, 2), torch.linspace(1, 0, 6), callback=cb)


# -- two service processes sharing one store ------------------------------------------------------

_WORKER = """
import sys, time
from omnidit.serving.files import OutputDir
from omnidit.serving.jobs import open_store
from omnidit.serving.runner import JobRunner

url, data, owner, step_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

class Gen:  # a 'video' of 10 steps, step_s seconds each
    def save(self, path):
        open(path, "wb").write(b"mp4 by " + owner.encode())
    frames = [__import__("numpy").zeros((8, 8, 3), "uint8")]
    def label(self):
        return None

def generate(job, callback):
    for i in range(10):
        time.sleep(step_s)
        callback(i + 1, 10, None)
    return Gen()

runner = JobRunner(open_store(url, retention_s=3600, max_attempts=3), OutputDir(data), generate, lease_s=1.5,
                   poll_s=0.1, owner=owner)
print("ready", flush=True)
runner.run_forever()
"""


@pytest.mark.timeout(120)
def test_a_job_leased_by_a_killed_process_is_finished_by_the_other(store_url, tmp_path):
    """Two worker processes on one store: the first takes the job and is killed (SIGKILL, no release);
    once its lease expires the second reaps it and finishes it, on SQLite and on PostgreSQL alike."""
    import signal
    import subprocess
    import sys

    store = open_store(store_url, retention_s=3600, max_attempts=3)
    job, _ = store.create("p", PARAMS)
    data = tmp_path / "data"

    def start(owner, step_s):
        return subprocess.Popen([sys.executable, "-c", _WORKER, store_url, str(data), owner, str(step_s)],
                                stdout=subprocess.PIPE, text=True)

    first = start("first", 0.5)
    try:
        assert first.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while (j := store.get(job.id)).status != "in_progress" or j.progress < 10:
            assert time.monotonic() < deadline, j
            time.sleep(0.05)
        assert j.lease_owner == "first" and j.attempts == 1
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start("second", 0.05)
        try:
            assert second.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 40
            while (j := store.get(job.id)).status != "completed":
                assert time.monotonic() < deadline and j.status in ("in_progress", "queued"), j
                time.sleep(0.1)
        finally:
            second.kill()
            second.wait(10)
    finally:
        first.kill()
        first.wait(10)
    assert j.attempts == 2 and j.error is None and j.progress == 100
    assert OutputDir(data).video_path(job.id).read_bytes() == b"mp4 by second"
    store.close()
