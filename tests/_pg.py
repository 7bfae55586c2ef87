"""pytest plugin: a fresh PostgreSQL database per test.

Point ``TOOTI_TEST_POSTGRES_URL`` at a server where the role may CREATE
DATABASE (``eval "$(.ci/postgres.sh)"`` sets that up).  Without it the
PostgreSQL tests are skipped locally, and fail under CI (``CI=true``) so a
misconfigured pipeline cannot silently skip them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

ENV_VAR = "TOOTI_TEST_POSTGRES_URL"


def postgres_admin_url() -> str:
    """The configured server URL, or skip/fail the calling test."""
    url = os.environ.get(ENV_VAR)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(
            f'{ENV_VAR} is not set but CI=true: run `eval "$(.ci/postgres.sh)"` '
            "before pytest so the PostgreSQL tests run"
        )
    pytest.skip(f'{ENV_VAR} not set (run `eval "$(.ci/postgres.sh)"` to enable)')


def _with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a newly created, empty database, dropped after the test."""
    import psycopg

    admin_url = postgres_admin_url()
    dbname = f"tooti_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield _with_dbname(admin_url, dbname)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            # FORCE: a test that failed may have left pool connections open.
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A fresh database URL, once per engine: SQLite (temp file), PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{os.path.join(tmp_path, 'tooti.db')}"
    return request.getfixturevalue("postgres_url")


def raw_rows(url: str, sql: str) -> list[tuple[object, ...]]:
    """Run ``sql`` on ``url`` with the plain driver, bypassing the store."""
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def all_stored_values(url: str) -> list[tuple[str, str, str]]:
    """Every (table, column, value-as-text) in the database, for leak scans."""
    if url.startswith("sqlite:///"):
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    found: list[tuple[str, str, str]] = []
    for (table,) in raw_rows(url, sql):
        if url.startswith("sqlite:///"):
            columns = [r[1] for r in raw_rows(url, f'PRAGMA table_info("{table}")')]
        else:
            columns = [
                r[0]
                for r in raw_rows(
                    url,
                    "SELECT column_name FROM information_schema.columns"
                    f" WHERE table_schema = 'public' AND table_name = '{table}'"
                    " ORDER BY ordinal_position",
                )
            ]
        for row in raw_rows(url, f'SELECT * FROM "{table}"'):
            found.extend((str(table), col, str(val)) for col, val in zip(columns, row, strict=False))
    return found


# -- a throw-away cluster -------------------------------------------------------------------


class Cluster:
    """A private PostgreSQL server in a temporary directory, on its own port, which a test
    may stop, kill and restart without disturbing anything else using the shared server."""

    def __init__(self, bindir: str, datadir: str, port: int, as_postgres: bool) -> None:
        self.bindir, self.datadir, self.port = bindir, datadir, port
        self._as_postgres = as_postgres
        self.url = f"postgresql://tooti@127.0.0.1:{port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        import subprocess

        cmd = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if self._as_postgres:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", self.datadir, "-o", opts, "-l", self.datadir + "/log", "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop("fast")
        self.start()


def _pg_bindir() -> str | None:
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A fresh, private PostgreSQL cluster (role ``tooti``, trust auth on 127.0.0.1), removed
    afterwards. Skips (fails under CI) when the server binaries are missing."""
    import shutil
    import socket
    import tempfile

    from tests.conftest import require

    bindir = _pg_bindir()
    require(bindir is not None, "PostgreSQL server binaries (initdb, pg_ctl) not installed")
    assert bindir is not None
    as_postgres = os.geteuid() == 0
    require(
        not as_postgres or shutil.which("runuser") is not None, "runuser needed to run PostgreSQL as root"
    )
    datadir = tempfile.mkdtemp(prefix="tooti-pg-")
    if as_postgres:
        shutil.chown(datadir, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(bindir, datadir, port, as_postgres)
    try:
        cluster._run("initdb", "-D", datadir, "-A", "trust", "-U", "tooti", "--no-sync", timeout=120)
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except Exception:
            pass
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A private PostgreSQL cluster for one test (see :func:`private_cluster`)."""
    with private_cluster() as cluster:
        yield cluster
