"""PostgreSQL engine on a synchronous ``psycopg_pool.ConnectionPool``.

The pool is sync because all store work already runs in trio worker threads
(psycopg's async flavour targets asyncio, not trio).  Timeouts are short on
purpose: when the database is down a request should fail fast with
StoreUnavailable (so the gateway can serve cached keys and queue usage)
rather than hang.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from ._base import AlreadyExists, Engine, StoreUnavailable, as_utc

__all__ = ["PostgresEngine"]

T = TypeVar("T")


@functools.lru_cache(maxsize=256)
def _to_pyformat(sql: str) -> str:
    # The store writes "?" placeholders for both engines; psycopg wants "%s".
    # Store SQL never contains literal "?" or "%".
    return sql.replace("?", "%s")


class _PostgresTx:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(_to_pyformat(sql), params)
        return self._cur.fetchall() if self._cur.description is not None else []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(_to_pyformat(sql), params)
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(_to_pyformat(sql), rows)


class PostgresEngine(Engine):
    """PostgreSQL backend for a ``postgres://`` / ``postgresql://`` URL.

    ``timeout`` bounds both opening a connection and waiting for a free one
    in the pool; ``statement_timeout`` (seconds) bounds any single statement
    so a wedged server cannot pin a worker thread forever.
    Call :meth:`open` (blocking) before use.
    """

    engine = "postgresql"
    timestamp_type = "TIMESTAMPTZ"
    day_expr = "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 3.0,
        statement_timeout: float = 15.0,
        max_size: int = 10,
    ) -> None:
        self._timeout = timeout
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout,
            # Drop connections that died while idle (server restart) instead
            # of handing them out and failing the first query.
            check=ConnectionPool.check_connection,
            kwargs={
                "autocommit": True,  # transactions via conn.transaction()
                "connect_timeout": max(2, round(timeout)),  # libpq: whole seconds
                "options": f"-c TimeZone=UTC -c statement_timeout={int(statement_timeout * 1000)}",
            },
            name="tooti-store",
        )

    def open(self) -> None:
        """Open the pool, waiting until one connection works.

        Raises StoreUnavailable if none does within the timeout.
        """
        try:
            self._pool.open(wait=True, timeout=self._timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL within {self._timeout:g}s") from exc

    def transaction(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        # ``write`` needs no special handling: MVCC, and migrations take an
        # advisory lock themselves.
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                with conn.transaction():
                    with conn.cursor() as cur:
                        return fn(_PostgresTx(cur))
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(str(exc)) from exc
        except psycopg.OperationalError as exc:
            # Includes PoolTimeout/PoolClosed, lost connections, timeouts.
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc

    def to_db_time(self, dt: datetime) -> datetime:
        return as_utc(dt)

    def from_db_time(self, value: Any) -> datetime:
        return as_utc(value)

    def close(self) -> None:
        self._pool.close()
