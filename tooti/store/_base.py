"""Models, errors and the engine interface of the accounts store.

:class:`tooti.store._store.Store` holds all domain logic and SQL; an engine
(SQLite, PostgreSQL) only provides a :class:`Engine`: run a function inside
one database transaction (blocking; Store calls it from a worker thread) and
convert timestamps.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any, Protocol, TypeVar

__all__ = [
    "USAGE_SOURCES",
    "AlreadyExists",
    "ApiKey",
    "Engine",
    "Namespace",
    "NamespaceKey",
    "NamespaceVerifier",
    "NotFound",
    "StoreError",
    "StoreUnavailable",
    "Tx",
    "UsageRow",
    "UsageSummary",
]

T = TypeVar("T")


# -- errors -----------------------------------------------------------------


class StoreError(Exception):
    """Base class for errors raised by the store."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (down, locked out, timed out).

    Callers may retry later; nothing was written by the failed call.
    """


class AlreadyExists(StoreError):
    """A row with the same unique key (namespace name, key prefix) exists."""


class NotFound(StoreError):
    """The named row does not exist."""


# -- models -----------------------------------------------------------------


def utcnow() -> datetime:
    """Current time as an aware UTC datetime (the only kind the store emits)."""
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    """Normalise ``dt`` to aware UTC; naive datetimes are taken to be UTC."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


@dataclasses.dataclass(frozen=True)
class NamespaceKey:
    """One public key admitted to a namespace (the private half never reaches the store).

    ``expires_at`` is set only on a key kept through a rotation's grace period.
    """

    public_key: str  # "tooti-ns-pub-v1:..."
    fingerprint: str  # short, for listings and logs
    created_at: datetime
    expires_at: datetime | None = None

    def is_active(self, now: datetime | None = None) -> bool:
        return self.expires_at is None or self.expires_at > (utcnow() if now is None else as_utc(now))


@dataclasses.dataclass(frozen=True)
class Namespace:
    """A namespace: a named slice of the network; nodes join it by proving a namespace key.

    ``keys`` are the public keys currently stored (including ones in a grace period).  An
    empty ``keys`` means only ``allowed_peer_ids`` can join: a namespace migrated from the
    old secret scheme stays that way until it is rotated.
    """

    name: str
    owner: str
    allowed_peer_ids: tuple[str, ...]
    created_at: datetime
    rotated_at: datetime | None
    keys: tuple[NamespaceKey, ...] = ()


@dataclasses.dataclass(frozen=True)
class NamespaceVerifier:
    """What a gateway needs to admit a node to one namespace, and nothing that would let
    anyone else in: public keys only.

    ``revision`` changes whenever the keys or the allow-list change (a grace period ending
    included) or the namespace is deleted and re-created; a gateway compares it to decide
    whether its joined nodes must prove themselves again.
    """

    name: str
    public_keys: tuple[str, ...]
    allowed_peers: tuple[str, ...]
    revision: str

    def check_proof(self, signature: bytes, nonce: bytes, node_peer: bytes, gateway_peer: bytes) -> bool:
        """True when ``signature`` is a namespace proof (``tooti.p2p.keys.prove_namespace``)
        by one of this namespace's keys for this nonce, node and gateway."""
        from tooti.p2p import keys  # cryptography is loaded only by who checks proofs

        return any(
            keys.check_namespace_proof(pk, signature, nonce, self.name, node_peer, gateway_peer)
            for pk in self.public_keys
        )


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """Public record of an API key (never the secret or its hash).

    Empty ``namespaces`` / ``models`` mean unrestricted.  A key returned by
    ``verify_api_key`` may be revoked or expired: check :meth:`is_revoked` and
    :meth:`is_expired` to tell the reasons apart.
    """

    prefix: str
    owner: str
    namespaces: tuple[str, ...]
    models: tuple[str, ...]
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime

    def allows(self, namespace: str, model: str) -> bool:
        """Whether this key's scopes permit ``model`` in ``namespace``."""
        return (not self.namespaces or namespace in self.namespaces) and (
            not self.models or model in self.models
        )

    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime | None = None) -> bool:
        """Whether the key is past its expiry at ``now`` (default: utcnow)."""
        if self.expires_at is None:
            return False
        return self.expires_at <= (utcnow() if now is None else as_utc(now))


@dataclasses.dataclass(frozen=True)
class UsageRow:
    """One served request, as written to the ``usage`` table.

    ``request_id`` is the gateway's own id of the request (unique, never client-chosen) and
    the idempotency key: writing the same row twice (a batch retried after a timeout)
    counts it once.  ``client_request_id`` is the client's ``X-Request-ID``: recorded,
    nothing more.  ``usage_source`` says where the token counts come from (see
    :data:`USAGE_SOURCES`); ``flags`` is a comma-separated set of markers such as
    ``usage_clamped``.  Every field is normalised before it is stored
    (``tooti.store.usage.normalise``).
    """

    request_id: str
    at: datetime
    key_prefix: str
    namespace: str
    node_peer_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    status: int  # HTTP status returned to the client (200, 502, ...)
    gateway_id: str = ""
    client_request_id: str = ""
    usage_source: str = "backend"
    flags: str = ""


#: Where a row's token counts come from: the backend's own report (checked by the gateway),
#: the gateway's count of what it delivered, a bounded estimate, or nothing to bill.
USAGE_SOURCES = ("backend", "counted", "estimated", "none")


@dataclasses.dataclass(frozen=True)
class UsageSummary:
    """Usage totals for one (key_prefix, UTC day, model) group."""

    key_prefix: str
    day: date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    flagged_requests: int = 0  # rows with any flag (clamped, normalised, ...)


# -- engine interface -------------------------------------------------------


class Tx(Protocol):
    """A cursor inside one open transaction.

    SQL uses ``?`` placeholders on every engine; backends translate.
    """

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement and return all result rows."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement and return its row count."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter row."""
        ...


class Engine(abc.ABC):
    """What an engine must provide.  All methods are synchronous/blocking.

    ``engine`` names the SQL dialect ("sqlite" or "postgresql").
    ``timestamp_type`` is the column type migrations use for timestamps.
    ``day_expr`` is an SQL expression yielding ``usage.at`` as 'YYYY-MM-DD'
    in UTC.
    """

    engine: str
    timestamp_type: str
    day_expr: str

    @abc.abstractmethod
    def transaction(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        """Run ``fn`` inside one transaction: commit if it returns, roll back
        if it raises.  ``write=True`` takes the write lock up front (SQLite's
        BEGIN IMMEDIATE) so read-then-write sequences cannot deadlock.

        Raises StoreUnavailable when the database cannot be reached and
        AlreadyExists on a unique-constraint violation.
        """

    @abc.abstractmethod
    def to_db_time(self, dt: datetime) -> Any:
        """Convert an aware datetime into a query parameter."""

    @abc.abstractmethod
    def from_db_time(self, value: Any) -> datetime:
        """Convert a timestamp column value into an aware UTC datetime."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release all connections.  Idempotent."""
