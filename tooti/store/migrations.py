"""Versioned schema migrations, one schema for both engines.

Each migration is a list of DDL statements applied in one transaction, and
recorded in ``schema_migrations``.  Migrations are append-only: never edit
one that has shipped, add a new version instead.

Two processes may open the same database at once (two gateways starting
together), so :func:`apply` serialises itself: on PostgreSQL with a
transaction-scoped advisory lock, on SQLite by running inside a BEGIN
IMMEDIATE transaction (the backend's write transaction), which holds the
database write lock.  The loser of the race waits, then finds nothing left to
do.

The only per-engine difference is the timestamp column type (``{ts}``):
TIMESTAMPTZ on PostgreSQL, ISO-8601 UTC text on SQLite (which sorts
correctly as text).  Lists (peer ids, scopes) are JSON arrays in TEXT.
"""

from __future__ import annotations

import dataclasses

from ._base import Engine, Tx, utcnow

__all__ = ["MIGRATIONS", "Migration", "apply", "latest_version"]

# Arbitrary constant shared by every tooti process: "tooti" in ASCII.
_ADVISORY_LOCK_ID = 0x746F6F7469


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "namespaces, api_keys and usage",
        (
            """CREATE TABLE namespaces (
                name TEXT PRIMARY KEY,
                secret_hash TEXT NOT NULL,
                allowed_peer_ids TEXT NOT NULL DEFAULT '[]',
                owner TEXT NOT NULL DEFAULT '',
                created_at {ts} NOT NULL,
                rotated_at {ts}
            )""",
            """CREATE TABLE api_keys (
                prefix TEXT PRIMARY KEY,
                key_hash TEXT NOT NULL,
                owner TEXT NOT NULL DEFAULT '',
                namespaces TEXT NOT NULL DEFAULT '[]',
                models TEXT NOT NULL DEFAULT '[]',
                expires_at {ts},
                revoked_at {ts},
                created_at {ts} NOT NULL
            )""",
            """CREATE TABLE usage (
                request_id TEXT PRIMARY KEY,
                at {ts} NOT NULL,
                key_prefix TEXT NOT NULL,
                namespace TEXT NOT NULL,
                node_peer_id TEXT NOT NULL,
                model TEXT NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                latency_ms BIGINT NOT NULL,
                status INTEGER NOT NULL,
                gateway_id TEXT NOT NULL
            )""",
            # Summaries filter by time and, often, by key.
            "CREATE INDEX usage_at_idx ON usage (at)",
            "CREATE INDEX usage_key_at_idx ON usage (key_prefix, at)",
        ),
    ),
    Migration(
        2,
        "namespace public keys replace namespace secrets",
        (
            # Only public halves are stored: a copy of the database proves nothing.
            # ``expires_at`` is set on a key kept through a rotation's grace period.
            """CREATE TABLE namespace_keys (
                namespace TEXT NOT NULL,
                public_key TEXT NOT NULL,
                created_at {ts} NOT NULL,
                expires_at {ts},
                PRIMARY KEY (namespace, public_key)
            )""",
            # The secret hash *was* the proof key of the old scheme; nothing verifies against it
            # any more, so it is wiped rather than left for a thief. Such namespaces admit only
            # allow-listed peers until rotated (``tooti namespace rotate``).
            "UPDATE namespaces SET secret_hash = ''",
        ),
    ),
    Migration(
        3,
        "usage: client request id, usage source, flags; dead letters; bounded old rows",
        (
            "ALTER TABLE usage ADD COLUMN client_request_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE usage ADD COLUMN usage_source TEXT NOT NULL DEFAULT 'backend'",
            "ALTER TABLE usage ADD COLUMN flags TEXT NOT NULL DEFAULT ''",
            # Rows written before counts were bounded: clamp them the way new rows are clamped,
            # so no sum can overflow.
            """UPDATE usage SET flags = 'usage_clamped',
                prompt_tokens = CASE WHEN prompt_tokens < 0 THEN 0
                    WHEN prompt_tokens > 1000000000 THEN 1000000000 ELSE prompt_tokens END,
                completion_tokens = CASE WHEN completion_tokens < 0 THEN 0
                    WHEN completion_tokens > 1000000000 THEN 1000000000 ELSE completion_tokens END
              WHERE prompt_tokens < 0 OR prompt_tokens > 1000000000
                 OR completion_tokens < 0 OR completion_tokens > 1000000000""",
            # Rows the ledger could not write even alone: kept verbatim (as JSON text) with the
            # error, for an operator to inspect; never counted in usage.
            """CREATE TABLE usage_dead_letter (
                request_id TEXT PRIMARY KEY,
                at {ts} NOT NULL,
                payload TEXT NOT NULL,
                error TEXT NOT NULL
            )""",
        ),
    ),
)


def latest_version() -> int:
    return MIGRATIONS[-1].version


def apply(tx: Tx, backend: Engine) -> list[int]:
    """Apply every pending migration inside the caller's transaction.

    Must run in a *write* transaction (``backend.transaction(write=True)``).
    Returns the versions applied, in order; ``[]`` when up to date.
    """
    if backend.engine == "postgresql":
        # Taken before touching schema_migrations: concurrent CREATE TABLE IF
        # NOT EXISTS can still fail on PostgreSQL, the lock makes it moot.
        tx.query("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_LOCK_ID,))
    ts = backend.timestamp_type
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY,"
        " description TEXT NOT NULL,"
        f" applied_at {ts} NOT NULL)"
    )
    done = {int(row[0]) for row in tx.query("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            tx.execute(statement.format(ts=ts))
        tx.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.description, backend.to_db_time(utcnow())),
        )
        applied.append(migration.version)
    return applied
