"""Models, errors and the engine interface of the accounts store.

:class:`tooti.store._store.Store` holds all domain logic and SQL; an engine
(SQLite, PostgreSQL) only provides a :class:`Backend`: run a function inside
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
    "AlreadyExists",
    "ApiKey",
    "Backend",
    "Namespace",
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
class Namespace:
    """A namespace: a named slice of the network gated by a shared secret.

    Never carries the secret or its hash.
    """

    name: str
    owner: str
    allowed_peer_ids: tuple[str, ...]
    created_at: datetime
    rotated_at: datetime | None


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

    ``request_id`` is the idempotency key: writing the same row twice (for
    example when a batch is retried after a timeout) counts it once.
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


@dataclasses.dataclass(frozen=True)
class UsageSummary:
    """Usage totals for one (key_prefix, UTC day, model) group."""

    key_prefix: str
    day: date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


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


class Backend(abc.ABC):
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
