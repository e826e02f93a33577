"""A throwaway PostgreSQL cluster for the store's conformance suite.

``initdb`` into a temporary directory, ``pg_ctl start`` with no TCP listener (a unix
socket in that directory only), one schema per test, and a stop by the postmaster's
PID at the end of the session even when tests failed. PostgreSQL refuses to run as
root; as root the cluster runs as ``nobody``, which every Debian has, through
``runuser``. Without PostgreSQL's binaries the tests that need it skip, saying why.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

START_TIMEOUT_S = 60


def find_bindir() -> Path | None:
    """Debian keeps the server binaries out of PATH, one directory per major version."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).parent] if on_path else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


class PgCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        # /tmp, not pytest's tmp_path: nobody must reach it, and a unix socket path
        # has to stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="punchd-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.pid: int | None = None
        if self.as_user:
            shutil.chown(self.root, "nobody")

    def _run(self, *argv: str) -> None:
        proc = subprocess.run([*self.as_user, *argv], capture_output=True, text=True,
                              timeout=START_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync")
        # Durability is not under test here: skip the fsyncs.
        options = (f"-c listen_addresses='' -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "log"), "-w", "-t", str(START_TIMEOUT_S), "-o", options,
                  "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if self.pid is None and (self.data / "postmaster.pid").exists():  # start timed out
            with contextlib.suppress(ValueError, IndexError, OSError):
                self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)  # "fast" shutdown: end sessions, exit
            # pg_ctl waits (bounded) for that shutdown to finish; it fails once the
            # server is gone already, which is what we want.
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                          "-w", "-t", "20", "stop")
            if self._alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)

    def _alive(self) -> bool:
        assert self.pid is not None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return (self.data / "postmaster.pid").exists()

    def url(self, schema: str | None = None) -> str:
        url = f"postgresql://postgres@/postgres?host={quote(str(self.root), safe='')}"
        if schema is not None:
            url += "&options=" + quote(f"-csearch_path={schema}", safe="")
        return url

    @contextlib.contextmanager
    def fresh_schema(self) -> Iterator[str]:
        """A URL whose tables land in a new, empty schema, dropped afterwards."""
        import psycopg

        schema = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield self.url(schema)
        finally:
            with psycopg.connect(self.url(), autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's "
                    "postgresql package (scripts/setup does)")
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
