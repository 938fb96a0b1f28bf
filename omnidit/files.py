"""Atomic file writes, once: readers (a job poller, a resumed batch job, a model loader) see a
whole file or none, and a killed writer leaves only a dot-named temp file beside the target.

Temp names are `.<stem>.<8 random chars><suffix>`: the suffix is kept because writers such as
imageio choose the format from it, and `TEMP_NAME` lets a resumed job delete leftovers.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_NAME = re.compile(r"\.[A-Za-z0-9._-]+\.[a-z0-9_]{8}\.[A-Za-z0-9]+")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success it is renamed onto `path`, on any
    error it is removed. `mode` (mkstemp's default 0600 would hide outputs from other users)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.fchmod(fd, mode)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` all or nothing (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path
