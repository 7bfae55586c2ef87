"""SQLite engine: a small thread-safe connection pool over one database file.

WAL mode lets readers proceed while one writer commits, and the busy timeout
makes a second process (another gateway on the same file) wait for the write
lock instead of failing at once.  The database file and its side files are
readable by their owner only (see :func:`_secure_files`).  Write transactions
start with BEGIN IMMEDIATE so they take the write lock up front: a deferred transaction that
reads then writes can hit SQLITE_BUSY without the busy handler being able to
help.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ._base import AlreadyExists, Engine, StoreUnavailable, as_utc

__all__ = ["SQLiteEngine"]

T = TypeVar("T")
log = logging.getLogger(__name__)

# OperationalError messages that mean "cannot use the database right now",
# as opposed to bugs (syntax errors, missing tables) which must surface as is.
_UNAVAILABLE = ("locked", "busy", "unable to open", "disk i/o", "readonly", "disk is full")


def _unavailable(exc: sqlite3.Error) -> bool:
    message = str(exc).lower()
    return any(marker in message for marker in _UNAVAILABLE)


# umask is per process: serialise our own changes of it (other threads only ever see it
# tighter, never looser, for a moment).
_UMASK_LOCK = threading.Lock()
_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def _secure_files(path: str) -> None:
    """Create the database file readable by its owner only, and take group/other access away
    from an existing one and its side files.

    SQLite gives the -wal, -shm and -journal files the database file's own permissions, so a
    0600 database keeps them 0600 whatever the umask.  The directory is left as it is: tooti
    never creates or widens it.
    """
    if not os.path.exists(path):
        with _UMASK_LOCK:
            old = os.umask(0o077)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600))
            except OSError:
                pass  # the connect that follows reports the problem with its own message
            finally:
                os.umask(old)
    for suffix in _SIDE_FILES:
        name = path + suffix
        try:
            mode = os.stat(name).st_mode
            if mode & 0o077:
                os.chmod(name, stat.S_IMODE(mode) & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot restrict permissions of %s: %s", name, exc)


class _SQLiteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SQLiteEngine(Engine):
    """SQLite backend for ``path`` (a file name, or ":memory:" for tests).

    Keeps up to ``pool_size`` connections, each used by one thread at a time.
    An in-memory database lives inside a single connection, so it gets a
    pool of one.
    """

    engine = "sqlite"
    timestamp_type = "TEXT"
    # Timestamps are stored as "YYYY-MM-DDTHH:MM:SS.ffffff+00:00".
    day_expr = "substr(at, 1, 10)"

    def __init__(self, path: str, *, busy_timeout: float = 5.0, pool_size: int = 4) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        if path == ":memory:":
            pool_size = 1
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        # Connect once now so a bad path fails in open_store, not later.
        self._release(self._acquire(), broken=False)

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            _secure_files(self._path)
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                # Autocommit mode: we issue BEGIN/COMMIT ourselves.
                isolation_level=None,
                # Connections move between trio's worker threads; the pool
                # guarantees one user at a time.
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self._path!r}: {exc}") from exc
        # Two processes opening a new database at once can both try to switch it to WAL;
        # SQLite answers the loser "database is locked" at once, without its busy handler,
        # so that one step is retried here for up to the busy timeout.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                if self._path != ":memory:":
                    conn.execute("PRAGMA journal_mode = WAL")
                    # NORMAL is durable across application crashes in WAL mode,
                    # and avoids an fsync per usage batch.
                    conn.execute("PRAGMA synchronous = NORMAL")
                    _secure_files(self._path)  # -wal and -shm exist now
                return conn
            except sqlite3.Error as exc:
                if "locked" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                conn.close()
                raise StoreUnavailable(f"cannot set up SQLite database {self._path!r}: {exc}") from exc

    def _acquire(self) -> sqlite3.Connection:
        self._slots.acquire()
        try:
            with self._lock:
                if self._closed:
                    raise StoreUnavailable("store is closed")
                if self._idle:
                    return self._idle.pop()
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def _release(self, conn: sqlite3.Connection, *, broken: bool) -> None:
        with self._lock:
            keep = not (broken or self._closed)
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()
        self._slots.release()

    def transaction(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        conn = self._acquire()
        broken = False
        try:
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = fn(_SQLiteTx(conn))
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        broken = True
                raise
        except sqlite3.OperationalError as exc:
            if _unavailable(exc):
                raise StoreUnavailable(f"SQLite database unavailable: {exc}") from exc
            raise
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise AlreadyExists(str(exc)) from exc
            raise
        finally:
            self._release(conn, broken=broken)

    def to_db_time(self, dt: datetime) -> str:
        # Fixed-width UTC ISO text sorts chronologically as a string.
        return as_utc(dt).isoformat(timespec="microseconds")

    def from_db_time(self, value: Any) -> datetime:
        return as_utc(datetime.fromisoformat(value))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
