"""Usage rows, dead letters and summaries (the SQL side of the ledger)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ._base import Engine, Tx, UsageRow, UsageSummary, as_utc, utcnow
from .usage import MAX_TOKENS, normalise, safe_text

__all__ = ["UsageStore"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_USAGE_COLUMNS = (
    "request_id, at, key_prefix, namespace, node_peer_id, model, prompt_tokens,"
    " completion_tokens, latency_ms, status, gateway_id, client_request_id, usage_source, flags"
)
_ERROR_LIMIT = 1000


def _bounded_sum(column: str) -> str:
    # Each figure is clamped when written; clamping again here keeps a summary exact and
    # overflow-free even over rows written by something else (an older gateway sharing the
    # database): at most 10^9 per row, so 2^63 needs more than 9 * 10^9 rows.
    return (
        f"SUM(CASE WHEN {column} < 0 THEN 0 WHEN {column} > {MAX_TOKENS} THEN {MAX_TOKENS} ELSE {column} END)"
    )


def _as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


class UsageStore:
    """Usage methods of :class:`tooti.store.Store` (a mixin)."""

    _backend: Engine

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> T: ...

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        """Insert ``rows`` in one transaction, each normalised first
        (:func:`tooti.store.usage.normalise`); rows whose ``request_id`` is already stored are
        skipped, so retrying a batch never double counts."""
        if not rows:
            return
        to_db = self._backend.to_db_time
        params = []
        for raw in rows:
            r = normalise(raw)
            params.append(
                (
                    r.request_id,
                    to_db(r.at),
                    r.key_prefix,
                    r.namespace,
                    r.node_peer_id,
                    r.model,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.latency_ms,
                    r.status,
                    r.gateway_id,
                    r.client_request_id,
                    r.usage_source,
                    r.flags,
                )
            )
        await self._run(
            lambda tx: tx.executemany(
                f"INSERT INTO usage ({_USAGE_COLUMNS}) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                params,
            )
        )

    async def record_dead_letters(self, rows: Sequence[tuple[UsageRow, str]]) -> None:
        """Keep rows that could not be written, each with its error, in ``usage_dead_letter``
        (as escaped JSON text, which any engine stores).  Dead letters are never counted in
        usage; a request id already dead-lettered is skipped."""
        if not rows:
            return
        params = []
        for row, error in rows:
            payload = {
                f.name: (as_utc(v).isoformat() if isinstance(v, datetime) else v)
                for f in dataclasses.fields(row)
                for v in (getattr(row, f.name),)
            }
            request_id, _ = safe_text(row.request_id, 128)
            params.append(
                (
                    request_id or f"dead_{id(row):x}",
                    self._backend.to_db_time(utcnow()),
                    # ensure_ascii: NUL and lone surrogates become \\u escapes, storable anywhere.
                    json.dumps(payload, ensure_ascii=True, default=repr),
                    safe_text(error, _ERROR_LIMIT)[0],
                )
            )
        await self._run(
            lambda tx: tx.executemany(
                "INSERT INTO usage_dead_letter (request_id, at, payload, error) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (request_id) DO NOTHING",
                params,
            )
        )

    async def usage_summary(
        self, *, key_prefix: str | None = None, since: datetime | None = None
    ) -> list[UsageSummary]:
        """Totals grouped by (key_prefix, UTC day, model), ordered by day.

        ``since`` (inclusive) filters on the request time.  Never fails on odd stored data:
        figures are bounded per row, and a row whose day cannot be read is summed under
        ``date.min``.
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
            f" {_bounded_sum('prompt_tokens')}, {_bounded_sum('completion_tokens')},"
            " SUM(CASE WHEN flags <> '' THEN 1 ELSE 0 END) FROM usage"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY 1, 2, 3 ORDER BY 2, 1, 3"
        )
        rows = await self._run(lambda tx: tx.query(sql, params), write=False)
        out = []
        for prefix, day, model, n, pt, ct, flagged in rows:
            try:
                when = date.fromisoformat(str(day))
            except ValueError:
                log.warning("usage rows with an unreadable time %r summed under %s", day, date.min)
                when = date.min
            out.append(
                UsageSummary(
                    str(prefix), when, str(model), _as_int(n), _as_int(pt), _as_int(ct), _as_int(flagged)
                )
            )
        return out

    async def count_usage(self) -> int:
        rows = await self._run(lambda tx: tx.query("SELECT COUNT(*) FROM usage"), write=False)
        return int(rows[0][0])

    async def count_dead_letters(self) -> int:
        rows = await self._run(lambda tx: tx.query("SELECT COUNT(*) FROM usage_dead_letter"), write=False)
        return int(rows[0][0])
