"""DIR/manifest.jsonl: one JSON row per item outcome, appended as results arrive.

Rows are written with one `os.write` each on an O_APPEND descriptor, straight to the kernel:
a killed job loses at most the row being written, and leaves at worst a truncated last line,
which `read_manifest` ignores and the next writer cuts off before appending.

Row fields: id, line, status ("ok" | "error"), stage ("parse" | "moderation" | "generate"), prompt, params
(frames, width, height, steps, guidance, negative_prompt; resolved to the model's values on
success), seed, path (relative to DIR), seconds, error, model, key (the item's fingerprint, or
the hash of a rejected line's text), run (which invocation wrote it), time (unix seconds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omnidit.batch.lines import BatchItem, LineError

MANIFEST_NAME = "manifest.jsonl"


class JobLocked(RuntimeError):
    """Another batch job holds the manifest of this output folder."""


def read_manifest(path: str | Path) -> list[dict]:
    """All complete rows; lines that do not parse (a killed job's partial last row) are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def finished_ids(rows: list[dict], out_dir: str | Path, fingerprints: dict[str, str]) -> set[str]:
    """Ids whose latest ok row has the item's current fingerprint and whose output file exists."""
    latest: dict[str, dict] = {}
    for row in rows:
        if row.get("status") == "ok" and isinstance(row.get("id"), str):
            latest[row["id"]] = row
    out_dir = Path(out_dir)
    return {
        i for i, row in latest.items()
        if fingerprints.get(i) == row.get("key") and isinstance(row.get("path"), str)
        and (out_dir / row["path"]).is_file()
    }


def reported_line_errors(rows: list[dict]) -> set[tuple[int, str]]:
    """(line, text hash) of rejected lines already in the manifest, so a rerun reports them once."""
    return {(r.get("line"), r.get("key")) for r in rows if r.get("stage") in ("parse", "moderation")}


def item_row(item: BatchItem, *, model: str, run: str, status: str, params: dict | None = None,
             path: str | None = None, seconds: float | None = None, error: str | None = None,
             variant: dict | None = None) -> dict:
    return {
        "id": item.id, "line": item.line, "status": status, "stage": "generate", "prompt": item.prompt,
        "params": params if params is not None else item.params(), "seed": item.seed, "path": path,
        "seconds": None if seconds is None else round(seconds, 4), "error": error, "model": model,
        "key": item.fingerprint(model, variant), "run": run, "time": round(time.time(), 3),
    }


def line_error_row(err: LineError, *, run: str) -> dict:
    return {
        "id": err.id, "line": err.line, "status": "error", "stage": err.stage, "prompt": err.prompt,
        "params": None, "seed": None, "path": None, "seconds": None, "error": err.message, "model": None,
        "key": err.key, "run": run, "time": round(time.time(), 3),
    }


class ManifestWriter:
    """Appends rows to a manifest, holding an exclusive lock on it while open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(self._fd, self.path)
            self._drop_partial_tail()
        except BaseException:
            os.close(self._fd)
            raise

    def _drop_partial_tail(self) -> None:
        """Cut a truncated last line (no newline) so the next row starts on a line of its own."""
        size = os.fstat(self._fd).st_size
        end = size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(self._fd, end - start, start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            os.ftruncate(self._fd, keep)

    def write(self, row: dict) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lock(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JobLocked(f"another batch job is writing {path}; wait for it or use another --out") from None
