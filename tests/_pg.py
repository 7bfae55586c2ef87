"""pytest plugin: a fresh PostgreSQL database per test.

Point ``TOOTI_TEST_POSTGRES_URL`` at a server where the role may CREATE
DATABASE (``eval "$(.ci/postgres.sh)"`` sets that up).  Without it the
PostgreSQL tests are skipped locally, and fail under CI (``CI=true``) so a
misconfigured pipeline cannot silently skip them.
"""

from __future__ import annotations

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
