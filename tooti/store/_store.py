"""The engine-independent accounts store: all domain logic and SQL."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

import trio

from ._base import (
    AlreadyExists,
    ApiKey,
    Backend,
    Namespace,
    NotFound,
    StoreUnavailable,
    Tx,
    UsageRow,
    UsageSummary,
    as_utc,
    utcnow,
)
from .secrets import generate_api_key, generate_secret, hash_secret, parse_api_key, verify_secret

__all__ = ["Store"]

T = TypeVar("T")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_COLUMNS = "prefix, owner, namespaces, models, expires_at, revoked_at, created_at"
_NS_COLUMNS = "name, owner, allowed_peer_ids, created_at, rotated_at"
_USAGE_COLUMNS = (
    "request_id, at, key_prefix, namespace, node_peer_id, model,"
    " prompt_tokens, completion_tokens, latency_ms, status, gateway_id"
)


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid namespace name {name!r}: use 1-64 letters, digits, '.', '_', '-'")


def _str_tuple(values: Sequence[str], what: str) -> tuple[str, ...]:
    # Scopes and peer lists are stored as JSON arrays; reject the classic
    # mistake of passing a bare string (which would become one-char items).
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of strings, not a string")
    out: list[str] = []
    for v in values:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{what} entries must be non-empty strings")
        if v not in out:
            out.append(v)
    return tuple(out)


class Store:
    """Accounts storage: namespaces, API keys and usage, on one database.

    Obtain one with :func:`tooti.store.open_store`.  Every method is async and
    runs its blocking database work (and argon2 hashing) in a worker thread,
    so none of them blocks the trio loop.  Each method is one transaction.
    Any method may raise :class:`StoreUnavailable`.  Safe to share between
    tasks, and between processes sharing the same database.
    """

    def __init__(self, backend: Backend) -> None:
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

    # -- namespaces ---------------------------------------------------------

    def _namespace(self, row: Sequence[Any]) -> Namespace:
        name, owner, peers, created, rotated = row
        return Namespace(
            name=name,
            owner=owner,
            allowed_peer_ids=tuple(json.loads(peers)),
            created_at=self._backend.from_db_time(created),
            rotated_at=None if rotated is None else self._backend.from_db_time(rotated),
        )

    async def _hash(self, secret: str | None) -> tuple[str, str]:
        """Return ``(plaintext, stored_hash)``; generate when ``secret`` is None."""
        if secret is None:
            secret = generate_secret()
            return secret, hash_secret(secret, chosen=False)
        if not secret:
            raise ValueError("secret must not be empty")
        call = functools.partial(hash_secret, secret, chosen=True)
        return secret, await trio.to_thread.run_sync(call)

    async def create_namespace(
        self,
        name: str,
        *,
        owner: str = "",
        secret: str | None = None,
        allowed_peers: Sequence[str] = (),
    ) -> tuple[Namespace, str]:
        """Create a namespace; return it with its plaintext secret.

        With ``secret=None`` a ~256-bit secret is generated (sha256-hashed);
        a caller-chosen secret is argon2id-hashed.  The plaintext is never
        stored: this return value is the only time it is available.
        Raises AlreadyExists if the name is taken, ValueError if invalid.
        """
        _check_name(name)
        peers = _str_tuple(allowed_peers, "allowed_peers")
        plaintext, hashed = await self._hash(secret)
        ns = Namespace(name, owner, peers, utcnow(), None)
        to_db = self._backend.to_db_time
        params = (name, hashed, json.dumps(list(peers)), owner, to_db(ns.created_at))

        def insert(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO namespaces (name, secret_hash, allowed_peer_ids, owner,"
                " created_at, rotated_at) VALUES (?, ?, ?, ?, ?, NULL)",
                params,
            )

        try:
            await self._run(insert)
        except AlreadyExists:
            raise AlreadyExists(f"namespace {name!r} already exists") from None
        return ns, plaintext

    async def get_namespace(self, name: str) -> Namespace | None:
        rows = await self._run(
            lambda tx: tx.query(f"SELECT {_NS_COLUMNS} FROM namespaces WHERE name = ?", (name,)),
            write=False,
        )
        return self._namespace(rows[0]) if rows else None

    async def list_namespaces(self) -> list[Namespace]:
        rows = await self._run(
            lambda tx: tx.query(f"SELECT {_NS_COLUMNS} FROM namespaces ORDER BY name"),
            write=False,
        )
        return [self._namespace(r) for r in rows]

    async def rotate_namespace_secret(self, name: str, secret: str | None = None) -> str:
        """Replace the secret (generated when None); return the new plaintext.

        The old secret stops verifying as soon as this commits.
        Raises NotFound for an unknown namespace.
        """
        plaintext, hashed = await self._hash(secret)
        now = self._backend.to_db_time(utcnow())
        count = await self._run(
            lambda tx: tx.execute(
                "UPDATE namespaces SET secret_hash = ?, rotated_at = ? WHERE name = ?",
                (hashed, now, name),
            )
        )
        if count == 0:
            raise NotFound(f"no namespace named {name!r}")
        return plaintext

    async def delete_namespace(self, name: str) -> bool:
        """Delete a namespace; return False if it did not exist."""
        count = await self._run(lambda tx: tx.execute("DELETE FROM namespaces WHERE name = ?", (name,)))
        return count > 0

    async def set_allowed_peers(self, name: str, peers: Sequence[str]) -> None:
        """Replace the list of peer ids admitted without the secret.

        Raises NotFound for an unknown namespace.
        """
        encoded = json.dumps(list(_str_tuple(peers, "peers")))
        count = await self._run(
            lambda tx: tx.execute(
                "UPDATE namespaces SET allowed_peer_ids = ? WHERE name = ?",
                (encoded, name),
            )
        )
        if count == 0:
            raise NotFound(f"no namespace named {name!r}")

    async def namespace_verifier(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        """(stored secret hash, allowed peer ids) of a namespace, or None when unknown. For the
        gateway's challenge-response proof (``tooti.store.proof``); never leaves the process."""
        rows = await self._run(
            lambda tx: tx.query(
                "SELECT secret_hash, allowed_peer_ids FROM namespaces WHERE name = ?",
                (name,),
            ),
            write=False,
        )
        if not rows:
            return None
        stored_hash, peers = rows[0]
        return stored_hash, tuple(json.loads(peers))

    async def verify_namespace(self, name: str, secret: str | None, peer_id: str) -> bool:
        """True when ``peer_id`` is allow-listed or ``secret`` matches.

        The secret comparison is constant-time (and argon2 runs in a thread).
        Unknown namespaces verify as False.
        """
        verifier = await self.namespace_verifier(name)
        if verifier is None:
            return False
        stored_hash, peers = verifier
        if peer_id and peer_id in peers:
            return True
        if secret is None:
            return False
        return await trio.to_thread.run_sync(verify_secret, secret, stored_hash)

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
        key_ns = _str_tuple(namespaces, "namespaces")
        key_models = _str_tuple(models, "models")
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

    # -- usage --------------------------------------------------------------

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        """Insert ``rows`` in one transaction; rows whose ``request_id`` is
        already stored are skipped, so retrying a batch never double counts."""
        if not rows:
            return
        to_db = self._backend.to_db_time
        params = [
            (
                r.request_id,
                to_db(as_utc(r.at)),
                r.key_prefix,
                r.namespace,
                r.node_peer_id,
                r.model,
                int(r.prompt_tokens),
                int(r.completion_tokens),
                int(r.latency_ms),
                int(r.status),
                r.gateway_id,
            )
            for r in rows
        ]
        await self._run(
            lambda tx: tx.executemany(
                f"INSERT INTO usage ({_USAGE_COLUMNS}) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                params,
            )
        )

    async def usage_summary(
        self, *, key_prefix: str | None = None, since: datetime | None = None
    ) -> list[UsageSummary]:
        """Totals grouped by (key_prefix, UTC day, model), ordered by day.

        ``since`` (inclusive) filters on the request time.
        """
        where: list[str] = []
        params: list[Any] = []
        if key_prefix is not None:
            where.append("key_prefix = ?")
            params.append(key_prefix)
        if since is not None:
            where.append("at >= ?")
            params.append(self._backend.to_db_time(as_utc(since)))
        sql = (
            f"SELECT key_prefix, {self._backend.day_expr}, model, COUNT(*),"
            " SUM(prompt_tokens), SUM(completion_tokens) FROM usage"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY 1, 2, 3 ORDER BY 2, 1, 3"
        )
        rows = await self._run(lambda tx: tx.query(sql, params), write=False)
        return [
            UsageSummary(p, date.fromisoformat(d), m, int(n), int(pt), int(ct)) for p, d, m, n, pt, ct in rows
        ]

    async def count_usage(self) -> int:
        rows = await self._run(lambda tx: tx.query("SELECT COUNT(*) FROM usage"), write=False)
        return int(rows[0][0])
