"""A throwaway PostgreSQL server for the job-store tests: Debian's `postgresql` package (installed by
.ci/run), a temporary data dir, a free port on 127.0.0.1, trust auth; stopped and removed afterwards.

PostgreSQL refuses to run as root, so as root the server runs as the package's `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager

from fake_api import free_port


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def unavailable_reason() -> str | None:
    """Why no server can be started here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if _bindir() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run does it as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _run(args: list[str], as_postgres: bool) -> None:
    cmd = ["runuser", "-u", "postgres", "--", *args] if as_postgres else args
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


@contextmanager
def postgres_server():
    """Yields `postgresql://postgres@127.0.0.1:PORT` (database `postgres`)."""
    bindir = _bindir()
    as_postgres = os.geteuid() == 0
    root = tempfile.mkdtemp(prefix="omnidit-pg-")
    data = os.path.join(root, "data")
    if as_postgres:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port = free_port()
    try:
        _run([f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
             as_postgres)
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        _run([f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w", "-t", "60",
              "start"], as_postgres)
        url = f"postgresql://postgres@127.0.0.1:{port}"
        _wait(url + "/postgres")
        yield url
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            try:
                _run([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], as_postgres)
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def _wait(url: str, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def fresh_database(server_url: str, name: str) -> str:
    """CREATE DATABASE name (dropped first if left over); returns its URL."""
    import psycopg

    with psycopg.connect(server_url + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url}/{name}"
