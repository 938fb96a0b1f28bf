"""Durable video-job store: SQLite in WAL mode (embedded default) or PostgreSQL (several nodes).

A job row is written before the API answers 202, so an accepted job survives any crash.
Workers `claim` a queued job under a lease (owner + expiry) and renew it with
`heartbeat`; every state change a worker makes is conditional on still holding the lease,
so a cancelled, deleted or taken-over job can never be overwritten by a stale worker.
`reap` hands jobs whose lease expired back to the queue, or fails them after
`max_attempts` tries with an error saying why: no job stays `in_progress` forever.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omnidit.serving.files import new_video_id

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
TERMINAL = ("completed", "failed", "cancelled")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0,
        prompt TEXT NOT NULL,
        params TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION NOT NULL,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires DOUBLE PRECISION,
        idempotency_key TEXT UNIQUE,
        request_hash TEXT,
        output TEXT)""",
    "CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id)",
    "CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL)",
]
# Columns added after the first release, for stores created before them: (name, SQL type).
# model: the served model a job runs on (NULL in older rows: the service's first model).
_ADDED_COLUMNS = [("model", "TEXT")]
_LIST_ORDER = {"desc": ("<", "DESC"), "asc": (">", "ASC")}
_REDACTED = re.compile(r"hmac-sha256:[0-9a-f]{64}")  # a prompt kept as its keyed hash (omnidit/safety/audit.py)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class QueueFull(Exception):
    """`max_queued` jobs are already waiting."""


@dataclass
class Job:
    id: str
    status: str
    progress: int
    prompt: str
    params: dict
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float
    error: dict | None
    attempts: int
    lease_owner: str | None
    lease_expires: float | None
    idempotency_key: str | None
    request_hash: str | None
    output: str | None
    model: str | None = None  # the model id it runs on; None: a row from before several models (the first)

    @classmethod
    def from_row(cls, row: dict) -> "Job":
        row = dict(row)
        row["params"] = json.loads(row["params"])
        row["error"] = json.loads(row["error"]) if row["error"] else None
        return cls(**row)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_api(self, model_id: str) -> dict:
        """The public job object (OpenAI video-shaped); leases and hashes stay private. `model_id`: the
        service's default model, named for rows that do not record theirs."""
        p = self.params

        def ts(t):
            return None if t is None else int(t)

        return {
            "id": self.id, "object": "video", "model": self.model or model_id, "status": self.status,
            "progress": self.progress, "created_at": ts(self.created_at), "started_at": ts(self.started_at),
            "completed_at": ts(self.finished_at) if self.status == "completed" else None,
            "finished_at": ts(self.finished_at), "expires_at": ts(self.expires_at),
            "prompt": self.prompt, "size": f"{p['width']}x{p['height']}", "frames": p["frames"], "fps": p["fps"],
            "seconds": round(p["frames"] / p["fps"], 3), "seed": p["seed"], "steps": p["steps"],
            "guidance": p["guidance"], "negative_prompt": p.get("negative_prompt"), "cache": p.get("cache"),
            "lora": p.get("lora") or {},
            "attempts": self.attempts, "error": self.error,
        }


class JobStore:
    """Job semantics in SQL both back ends accept (`?` placeholders; Postgres swaps them)."""

    skip_locked = ""  # Postgres: concurrent claimers skip each other's rows
    integrity_errors: tuple = ()
    columns_sql = ""  # the jobs table's column names, as rows {"name": ...}

    def _migrate(self, q) -> None:
        """The schema, plus the columns a store created by an older release lacks."""
        for stmt in _SCHEMA:
            q(stmt, ())
        rows, _ = q(self.columns_sql, ())
        have = {r["name"] for r in rows}
        for name, type_ in _ADDED_COLUMNS:
            if name not in have:
                q(f"ALTER TABLE jobs ADD COLUMN {name} {type_}", ())

    def __init__(self, *, retention_s: float, max_attempts: int = 3):
        self.retention_s = float(retention_s)
        self.max_attempts = int(max_attempts)

    # -- back-end hooks ----------------------------------------------------------------------
    @contextmanager
    def _tx(self):  # yields q(sql, params) -> (rows as dicts, rowcount), inside one transaction
        raise NotImplementedError
        yield

    def close(self) -> None:
        pass

    # -- creating and reading ------------------------------------------------------------------
    def create(self, prompt: str, params: dict, *, idempotency_key: str | None = None,
               request_hash: str | None = None, max_queued: int | None = None, model: str | None = None,
               now: float | None = None) -> tuple[Job, bool]:
        """Insert a queued job (durable on return) for `model` (its id; None: whichever claims it).
        Same key + same request -> (existing job, False).

        Raises IdempotencyConflict (key reused with another request) or QueueFull (`max_queued` waiting).
        """
        now = time.time() if now is None else now
        for attempt in range(2):
            try:
                with self._tx() as q:
                    if idempotency_key is not None:
                        rows, _ = q("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
                        if rows:
                            job = Job.from_row(rows[0])
                            if job.request_hash != request_hash:
                                raise IdempotencyConflict(idempotency_key)
                            return job, False
                    if max_queued is not None:
                        rows, _ = q("SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'", ())
                        if int(rows[0]["n"]) >= max_queued:
                            raise QueueFull(max_queued)
                    job_id = new_video_id()
                    q("INSERT INTO jobs (id, status, progress, prompt, params, created_at, expires_at, attempts,"
                      " idempotency_key, request_hash, model) VALUES (?, 'queued', 0, ?, ?, ?, ?, 0, ?, ?, ?)",
                      (job_id, prompt, json.dumps(params), now, now + self.retention_s, idempotency_key, request_hash,
                       model))
                    return self._get(q, job_id), True
            except self.integrity_errors:  # a concurrent create won the key (Postgres): read its job
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> Job | None:
        with self._tx() as q:
            return self._get(q, job_id)

    @staticmethod
    def _get(q, job_id: str) -> Job | None:
        rows, _ = q("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def list(self, *, limit: int = 20, after: str | None = None, order: str = "desc") -> tuple[list[Job], bool]:
        """A page of jobs by creation time; `after` is the last id of the previous page (KeyError if unknown)."""
        cmp, direction = _LIST_ORDER[order]
        with self._tx() as q:
            where, args = "", ()
            if after is not None:
                cursor = self._get(q, after)
                if cursor is None:
                    raise KeyError(after)
                where = f"WHERE created_at {cmp} ? OR (created_at = ? AND id {cmp} ?)"
                args = (cursor.created_at, cursor.created_at, cursor.id)
            rows, _ = q(f"SELECT * FROM jobs {where} ORDER BY created_at {direction}, id {direction} LIMIT ?",
                        (*args, limit + 1))
        jobs = [Job.from_row(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def counts(self) -> dict[str, int]:
        with self._tx() as q:
            rows, _ = q("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status", ())
        out = dict.fromkeys(STATUSES, 0)
        out.update({r["status"]: int(r["n"]) for r in rows})
        return out

    # -- the worker side ----------------------------------------------------------------------
    def claim(self, owner: str, lease_s: float, now: float | None = None, *, model: str | None = None,
              default: bool = False) -> Job | None:
        """Take the oldest queued job under a lease of `lease_s` seconds (expired leases are reaped first).
        `model`: only that model's jobs (and, with `default`, rows that name no model); None: any job."""
        now = time.time() if now is None else now
        where, args = "", ()
        if model is not None:
            where, args = " AND (model = ?" + (" OR model IS NULL)" if default else ")"), (model,)
        with self._tx() as q:
            self._reap(q, now)
            rows, _ = q(f"SELECT id FROM jobs WHERE status = 'queued'{where} ORDER BY created_at, id LIMIT 1"
                        + self.skip_locked, args)
            if not rows:
                return None
            job_id = rows[0]["id"]
            q("UPDATE jobs SET status = 'in_progress', progress = 0, lease_owner = ?, lease_expires = ?,"
              " attempts = attempts + 1, started_at = COALESCE(started_at, ?) WHERE id = ?",
              (owner, now + lease_s, now, job_id))
            return self._get(q, job_id)

    def heartbeat(self, job_id: str, owner: str, lease_s: float, progress: int | None = None,
                  now: float | None = None) -> bool:
        """Renew the lease (and set progress). False: the job is no longer ours (cancelled, deleted, taken over)."""
        now = time.time() if now is None else now
        with self._tx() as q:
            if progress is None:
                _, n = q("UPDATE jobs SET lease_expires = ? WHERE id = ? AND status = 'in_progress'"
                         " AND lease_owner = ?", (now + lease_s, job_id, owner))
            else:
                _, n = q("UPDATE jobs SET lease_expires = ?, progress = ? WHERE id = ? AND status = 'in_progress'"
                         " AND lease_owner = ?", (now + lease_s, int(progress), job_id, owner))
        return n == 1

    def complete(self, job_id: str, owner: str, output: str, now: float | None = None) -> bool:
        return self._finish(job_id, owner, "completed", output=output, now=now)

    def fail(self, job_id: str, owner: str, error: dict, now: float | None = None) -> bool:
        return self._finish(job_id, owner, "failed", error=error, now=now)

    def _finish(self, job_id, owner, status, *, output=None, error=None, now=None) -> bool:
        assert status in ("completed", "failed")  # interpolated below: never user input
        now = time.time() if now is None else now
        with self._tx() as q:
            _, n = q(f"UPDATE jobs SET status = '{status}', progress = CASE WHEN '{status}' = 'completed' THEN 100"
                     " ELSE progress END, output = ?, error = ?, finished_at = ?, expires_at = ?, lease_owner = NULL,"
                     " lease_expires = NULL WHERE id = ? AND status = 'in_progress' AND lease_owner = ?",
                     (output, json.dumps(error) if error else None, now, now + self.retention_s, job_id, owner))
        return n == 1

    def release(self, job_id: str, owner: str) -> bool:
        """Give a job back to the queue (graceful shutdown); the attempt does not count."""
        with self._tx() as q:
            _, n = q("UPDATE jobs SET status = 'queued', progress = 0, lease_owner = NULL, lease_expires = NULL,"
                     " attempts = attempts - 1 WHERE id = ? AND status = 'in_progress' AND lease_owner = ?",
                     (job_id, owner))
        return n == 1

    def reap(self, now: float | None = None) -> dict[str, int]:
        with self._tx() as q:
            return self._reap(q, time.time() if now is None else now)

    def _reap(self, q, now: float) -> dict[str, int]:
        error = {"code": "worker_lost", "message": (
            f"the generator replica running this job stopped responding on each of {self.max_attempts} attempts; "
            "giving up")}
        _, failed = q("UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, expires_at = ?,"
                      " lease_owner = NULL, lease_expires = NULL"
                      " WHERE status = 'in_progress' AND lease_expires < ? AND attempts >= ?",
                      (json.dumps(error), now, now + self.retention_s, now, self.max_attempts))
        _, requeued = q("UPDATE jobs SET status = 'queued', progress = 0, lease_owner = NULL, lease_expires = NULL"
                        " WHERE status = 'in_progress' AND lease_expires < ?", (now,))
        return {"failed": failed, "requeued": requeued}

    def fail_unserved(self, models: list[str], now: float | None = None) -> int:
        """Fail queued jobs of a model this service no longer serves (a restart with other models), so
        none waits forever; rows that name no model belong to the first and are kept."""
        now = time.time() if now is None else now
        error = {"code": "model_not_found", "message": (
            f"the model this job was queued for is no longer served here (served: {', '.join(models)})")}
        with self._tx() as q:
            marks = ", ".join("?" * len(models))
            _, n = q("UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, expires_at = ?"
                     f" WHERE status = 'queued' AND model IS NOT NULL AND model NOT IN ({marks})",
                     (json.dumps(error), now, now + self.retention_s, *models))
        return n

    # -- the client side ----------------------------------------------------------------------
    def cancel(self, job_id: str, now: float | None = None) -> Job | None:
        """Queued or running -> cancelled (a running worker notices at its next step). Terminal: unchanged."""
        now = time.time() if now is None else now
        with self._tx() as q:
            q("UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ?, lease_owner = NULL,"
              " lease_expires = NULL WHERE id = ? AND status IN ('queued', 'in_progress')",
              (now, now + self.retention_s, job_id))
            return self._get(q, job_id)

    def delete(self, job_id: str) -> Job | None:
        with self._tx() as q:
            job = self._get(q, job_id)
            if job is not None:
                q("DELETE FROM jobs WHERE id = ?", (job_id,))
            return job

    def delete_expired(self, now: float | None = None) -> list[Job]:
        """Remove finished jobs past `expires_at`; the caller removes their files."""
        now = time.time() if now is None else now
        with self._tx() as q:
            rows, _ = q("SELECT * FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')"
                        " AND expires_at < ?", (now,))
            for r in rows:
                q("DELETE FROM jobs WHERE id = ?", (r["id"],))
        return [Job.from_row(r) for r in rows]

    # -- prompt privacy (--store-prompts hash) --------------------------------------------------
    def redact_prompt(self, job_id: str, redact) -> Job | None:
        """A finished job's prompt replaced by `redact(prompt)` (its keyed hash); queued/running jobs keep
        the text their worker needs. Returns the job (None if gone)."""
        with self._tx() as q:
            job = self._get(q, job_id)
            if job is not None and job.terminal and not _REDACTED.fullmatch(job.prompt):
                q("UPDATE jobs SET prompt = ? WHERE id = ?", (redact(job.prompt), job_id))
                job = self._get(q, job_id)
            return job

    def redact_prompts(self, redact) -> int:
        """`redact_prompt` for every finished job whose prompt is still text; how many changed."""
        with self._tx() as q:
            rows, _ = q("SELECT id, prompt FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')"
                        " AND prompt NOT LIKE 'hmac-sha256:%'", ())
            for r in rows:
                q("UPDATE jobs SET prompt = ? WHERE id = ?", (redact(r["prompt"]), r["id"]))
        return len(rows)

    # -- counters for /metrics ------------------------------------------------------------------
    def add_stats(self, values: dict[str, float]) -> None:
        with self._tx() as q:
            for name, v in values.items():
                q("INSERT INTO stats (name, value) VALUES (?, ?)"
                  " ON CONFLICT (name) DO UPDATE SET value = stats.value + excluded.value", (name, float(v)))

    def stats(self) -> dict[str, float]:
        with self._tx() as q:
            rows, _ = q("SELECT name, value FROM stats", ())
        return {r["name"]: float(r["value"]) for r in rows}


class SQLiteJobStore(JobStore):
    """One file under the data dir, WAL mode: readers never block the writer; every commit is fsynced."""

    integrity_errors = (sqlite3.IntegrityError,)
    columns_sql = "SELECT name FROM pragma_table_info('jobs')"

    def __init__(self, path: str | Path, **kw):
        super().__init__(**kw)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 30000")
        self.journal_mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        self._conn.execute("PRAGMA synchronous = FULL")  # a 202'd job survives power loss, not just a crash
        with self._tx() as q:
            self._migrate(q)

    def _q(self, sql: str, params=()) -> tuple[list[dict], int]:
        cur = self._conn.execute(sql, params)
        rows = [dict(r) for r in cur.fetchall()] if cur.description else []
        return rows, cur.rowcount

    @contextmanager
    def _tx(self):
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: claim is race-free
            try:
                yield self._q
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresJobStore(JobStore):
    """The same semantics on PostgreSQL (psycopg 3), for replicas on several nodes."""

    skip_locked = " FOR UPDATE SKIP LOCKED"
    columns_sql = ("SELECT column_name AS name FROM information_schema.columns"
                   " WHERE table_name = 'jobs' AND table_schema = current_schema()")

    def __init__(self, url: str, **kw):
        super().__init__(**kw)
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise RuntimeError("job_store is a PostgreSQL URL but psycopg is not installed; "
                               "pip install 'psycopg[binary]' (or use the embedded SQLite store)") from None
        self.integrity_errors = (psycopg.errors.UniqueViolation,)
        self._lock = threading.RLock()
        self._conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        with self._tx() as q:
            q("SELECT pg_advisory_xact_lock(2126)", ())  # two services starting together migrate one at a time
            self._migrate(q)

    def _q(self, sql: str, params=()) -> tuple[list[dict], int]:
        cur = self._conn.execute(sql.replace("?", "%s"), params)
        rows = list(cur.fetchall()) if cur.description else []
        return rows, cur.rowcount

    @contextmanager
    def _tx(self):
        with self._lock, self._conn.transaction():
            yield self._q

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_store(url: str, *, retention_s: float, max_attempts: int = 3) -> JobStore:
    """`sqlite:///path/jobs.db` or `postgresql://user@host/db`."""
    if url.startswith("sqlite:///"):
        # sqlite:///rel.db is relative, sqlite:////abs/jobs.db absolute (SQLAlchemy's convention)
        return SQLiteJobStore(url[len("sqlite:///"):], retention_s=retention_s, max_attempts=max_attempts)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresJobStore(url, retention_s=retention_s, max_attempts=max_attempts)
    raise ValueError(f"job_store must be sqlite:///PATH or postgresql://..., got {url!r}")
