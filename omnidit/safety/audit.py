"""The moderation audit log and the keyed prompt hash.

A line per decision (JSON): `{"time", "id", "stage", "decision", "category", "check", "field",
"level", "prompt_hmac"}`. It never holds prompt text or the term/pattern that matched: the
prompt appears only as HMAC-SHA256 under the service's prompt key, so an operator holding the
key can tell whether a given prompt was the one decided on, and nobody can read it back.

The prompt key: `$OMNIDIT_PROMPT_KEY` when set, else a 32-byte random key created once in a
file (mode 0600) beside what it protects. `--store-prompts hash` uses the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path

KEY_ENV = "OMNIDIT_PROMPT_KEY"
HASH_PREFIX = "hmac-sha256:"


def prompt_key(key_file: str | os.PathLike) -> bytes:
    """`$OMNIDIT_PROMPT_KEY` (its UTF-8 bytes), else the key in `key_file`, created when missing."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    path = Path(key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            key = path.read_bytes()
            if len(key) == 32:
                return key
            time.sleep(0.01)
        raise ValueError(f"prompt key file {str(path)!r} is not a 32-byte key; delete it or set ${KEY_ENV}")
    key = secrets.token_bytes(32)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


def prompt_hash(key: bytes, text: str) -> str:
    """`hmac-sha256:<hex>` of the text under `key`."""
    return HASH_PREFIX + hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


class AuditLog:
    """Append-only JSON lines; one `os.write` per line (O_APPEND), so several processes can share a file."""

    def __init__(self, path: str | os.PathLike, key: bytes):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key
        self._lock = threading.Lock()

    def record(self, *, stage: str, decision: str, request_id: str | None, prompt: str | None,
               category: str | None = None, check: str | None = None, field: str | None = None,
               level: str = "auto") -> dict:
        now = time.time()
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
               "id": request_id, "stage": stage, "decision": decision, "category": category, "check": check,
               "field": field, "level": level,
               "prompt_hmac": None if prompt is None else prompt_hash(self.key, prompt)}
        line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return row
