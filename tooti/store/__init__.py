"""Accounts storage for the gateway: namespaces, API keys and usage.

    store = await open_store("sqlite:///tooti.db")   # or postgresql://...
    try:
        key, plaintext = await store.create_api_key(owner="alice")
    finally:
        await store.aclose()

Namespaces hold public keys only (``tooti.p2p.keys``): a copy of the database lets
nobody join one.  SQLite files are created readable by their owner only.

SQLite suits a single host (several gateway processes may share the file);
PostgreSQL suits several hosts.  Both engines have the same schema and
behaviour, and all blocking work runs in trio worker threads.
"""

from __future__ import annotations

import trio

from ._base import (
    USAGE_SOURCES,
    AlreadyExists,
    ApiKey,
    Engine,
    Namespace,
    NamespaceKey,
    NamespaceVerifier,
    NotFound,
    StoreError,
    StoreUnavailable,
    UsageRow,
    UsageSummary,
)
from ._store import Store

__all__ = [
    "USAGE_SOURCES",
    "AlreadyExists",
    "ApiKey",
    "Namespace",
    "NamespaceKey",
    "NamespaceVerifier",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UsageRow",
    "UsageSummary",
    "open_store",
]

_SQLITE = "sqlite:///"
_POSTGRES = ("postgres://", "postgresql://")


def _open_backend(url: str) -> Engine:
    # Engine modules are imported lazily: a SQLite-only deployment never
    # needs to load psycopg.
    if url.startswith(_SQLITE):
        from ._sqlite import SQLiteEngine

        path = url[len(_SQLITE) :]
        if not path:
            raise ValueError(f"no file name in SQLite URL {url!r}")
        return SQLiteEngine(path)
    if url.startswith(_POSTGRES):
        from ._postgres import PostgresEngine

        backend = PostgresEngine(url)
        backend.open()
        return backend
    raise ValueError("unsupported database URL (expected sqlite:///PATH, postgres:// or postgresql://)")


async def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the store at ``url`` and (by default) apply pending migrations.

    URLs: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``,
    ``sqlite:///:memory:`` (tests), ``postgres://`` / ``postgresql://``.
    Migrations are safe to run from several processes at once.
    Raises StoreUnavailable if the database cannot be reached, ValueError
    for an unsupported URL.  Close the store with ``await store.aclose()``.
    """
    backend = await trio.to_thread.run_sync(_open_backend, url)
    store = Store(backend)
    if migrate:
        try:
            await store.migrate()
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.aclose()
            raise
    return store
