"""A real PostgreSQL server for the cluster tests: initdb into a temporary folder, the server on 127.0.0.1 at a free
port (its socket in that folder), databases made on demand, stopped by its process id at the end.

PostgreSQL refuses to run as root; CI runs as root, so there the server runs as the `postgres` system user (Debian's
`postgresql` package makes it; .ci/run installs the package when initdb is missing). Missing binaries fail the
tests loudly: they are never skipped."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.support import free_port

USER = "postgres"


def bin_dir() -> Path:
    """The folder of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest version)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    raise RuntimeError("PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql/*/bin); the "
                       "cluster-storage tests need it: apt-get install postgresql (.ci/run does this)")


def _as_server_user(cmd: list[str]) -> list[str]:
    """Root runs the server as `postgres` (PostgreSQL refuses root); anyone else runs it as themselves."""
    if os.geteuid() != 0:
        return cmd
    try:
        import pwd
        pwd.getpwnam(USER)
    except KeyError:
        raise RuntimeError(f"no '{USER}' system user to run PostgreSQL as (the server refuses root): "
                           f"useradd --system {USER} (.ci/run does this)") from None
    return ["runuser", "-u", USER, "--", *cmd]


class Postgres:
    """A running server: url(db) gives a SQLAlchemy URL (psycopg 3) of database `db`, created on first use."""

    def __init__(self, folder: Path, port: int, pid: int):
        self.folder, self.port, self.pid = folder, port, pid
        self._made: set[str] = set()

    def url(self, db: str) -> str:
        if db not in self._made:
            import psycopg
            with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{db}"')
            self._made.add(db)
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{db}"


@contextmanager
def postgres_server():
    """Start a throwaway PostgreSQL (~2 s: initdb without fsync) and stop it by pid at the end."""
    bindir = bin_dir()
    # /tmp, not pytest's tmp_path: the server user must reach the folder (pytest's is root-only), and the socket path
    # must stay under 107 characters.
    folder = Path(tempfile.mkdtemp(prefix="ismpg", dir="/tmp"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, USER, USER)
    port = free_port()
    run = lambda cmd: subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
    r = run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
    if r.returncode:
        raise RuntimeError(f"initdb failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    # fsync off: a test database need not survive a power cut, and it makes commits ~10x cheaper on shared disks.
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200"
    r = run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o", opts,
             "start"])
    if r.returncode:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {r.stdout[-2000:]}{r.stderr[-2000:]}{log[-2000:]}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield Postgres(folder, port, pid)
    finally:
        stop(pid)
        shutil.rmtree(folder, ignore_errors=True)


def stop(pid: int, timeout_s: float = 30) -> None:
    """Fast shutdown (SIGINT: sessions end, the server exits cleanly), SIGKILL if it hangs."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if not alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """True while the process runs (a zombie nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
