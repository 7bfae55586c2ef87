"""The engine-independent accounts store: all domain logic and SQL."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import trio

from ._base import AlreadyExists, ApiKey, Engine, StoreUnavailable, Tx, as_utc, utcnow
from ._namespaces import NamespaceStore, str_tuple
from ._usage_store import UsageStore
from .secrets import generate_api_key, hash_secret, parse_api_key, verify_secret

__all__ = ["Store"]

T = TypeVar("T")

_KEY_COLUMNS = "prefix, owner, namespaces, models, expires_at, revoked_at, created_at"


class Store(NamespaceStore, UsageStore):
    """Accounts storage: namespaces, API keys and usage, on one database.

    Obtain one with :func:`tooti.store.open_store`.  Every method is async and
    runs its blocking database work in a worker thread,
    so none of them blocks the trio loop.  Each method is one transaction.
    Any method may raise :class:`StoreUnavailable`.  Safe to share between
    tasks, and between processes sharing the same database.
    """

    def __init__(self, backend: Engine) -> None:
        self._backend = backend

    @property
    def engine(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self._backend.engine

    async def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        call = functools.partial(self._backend.transaction, fn, write=write)
        return await trio.to_thread.run_sync(call)

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied (maybe [])."""
        from . import migrations

        return await self._run(lambda tx: migrations.apply(tx, self._backend))

    async def aclose(self) -> None:
        """Close all connections.  Idempotent."""
        await trio.to_thread.run_sync(self._backend.close)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def ping(self) -> bool:
        """True when the database answers a trivial query; never raises
        StoreUnavailable."""
        try:
            await self._run(lambda tx: tx.query("SELECT 1"), write=False)
        except StoreUnavailable:
            return False
        return True

    # -- API keys -----------------------------------------------------------

    def _api_key(self, row: Sequence[Any]) -> ApiKey:
        prefix, owner, namespaces, models, expires, revoked, created = row
        from_db = self._backend.from_db_time
        return ApiKey(
            prefix=prefix,
            owner=owner,
            namespaces=tuple(json.loads(namespaces)),
            models=tuple(json.loads(models)),
            expires_at=None if expires is None else from_db(expires),
            revoked_at=None if revoked is None else from_db(revoked),
            created_at=from_db(created),
        )

    async def create_api_key(
        self,
        *,
        owner: str = "",
        namespaces: Sequence[str] = (),
        models: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Create an API key; return its record and the plaintext key.

        The plaintext (``tt-<prefix>-<secret>``) is returned only here; the
        store keeps a sha256 hash.  Empty scopes mean unrestricted.
        """
        key_ns = str_tuple(namespaces, "namespaces")
        key_models = str_tuple(models, "models")
        expires = None if expires_at is None else as_utc(expires_at)
        to_db = self._backend.to_db_time
        for attempt in range(3):
            prefix, plaintext = generate_api_key()
            key = ApiKey(prefix, owner, key_ns, key_models, expires, None, utcnow())
            params = (
                prefix,
                hash_secret(plaintext, chosen=False),
                owner,
                json.dumps(list(key_ns)),
                json.dumps(list(key_models)),
                None if expires is None else to_db(expires),
                to_db(key.created_at),
            )
            try:
                await self._run(
                    lambda tx, params=params: tx.execute(  # type: ignore[misc]
                        "INSERT INTO api_keys (prefix, key_hash, owner, namespaces, models,"
                        " expires_at, revoked_at, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                        params,
                    )
                )
            except AlreadyExists:
                # A ~51-bit prefix collided: astronomically rare, just redraw.
                if attempt == 2:
                    raise
                continue
            return key, plaintext
        raise AssertionError("unreachable")

    async def verify_api_key(self, plaintext: str) -> ApiKey | None:
        """Return the key's record if ``plaintext`` is genuine, else None.

        Revoked and expired keys are returned too (inspect ``revoked_at`` /
        ``expires_at``): the caller decides how to reject them.
        """
        prefix = parse_api_key(plaintext)
        if prefix is None:
            return None
        rows = await self._run(
            lambda tx: tx.query(
                f"SELECT key_hash, {_KEY_COLUMNS} FROM api_keys WHERE prefix = ?",
                (prefix,),
            ),
            write=False,
        )
        # Keys are sha256-hashed, so this check is cheap enough for the loop.
        if not rows or not verify_secret(plaintext, rows[0][0]):
            return None
        return self._api_key(rows[0][1:])

    async def list_api_keys(self) -> list[ApiKey]:
        rows = await self._run(
            lambda tx: tx.query(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, prefix"),
            write=False,
        )
        return [self._api_key(r) for r in rows]

    async def revoke_api_key(self, prefix: str) -> bool:
        """Revoke a key; return False if unknown or already revoked."""
        now = self._backend.to_db_time(utcnow())
        count = await self._run(
            lambda tx: tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                (now, prefix),
            )
        )
        return count > 0
