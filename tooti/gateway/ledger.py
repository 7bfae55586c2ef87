"""Usage ledger: records served requests off the hot path, in batches.

Request handlers call :meth:`Ledger.record`, which only normalises the row and appends it to
memory; the :meth:`Ledger.run` task writes batches to the store at least every
``flush_interval`` (0.5 s by default).  A database outage therefore never slows or fails a
request: rows wait in memory and are written when the database comes back.  Writes are
idempotent on ``request_id`` (the gateway's own id of the request), so a batch retried after an
ambiguous failure (say, a commit whose acknowledgement was lost) never double counts.

A batch the database refuses for its *content* (not because it is down) is split in halves
until the offending rows stand alone; those go to the ``usage_dead_letter`` table, so one bad
row never blocks the others.  ``stats()`` exposes the counters.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from ..store import Store, StoreUnavailable, UsageRow
from ..store.usage import normalise

__all__ = ["Ledger"]

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger(__name__)

# Above this many waiting rows we warn (once per episode); memory use is
# then in the tens of MB, which is worth an operator's attention.
_BACKLOG_WARNING = 100_000


class Ledger:
    """Batches :class:`UsageRow`s into ``store`` from a background task.

    Start it with ``nursery.start(ledger.run)``.  Rows are written within about
    ``flush_interval`` seconds (the gateway uses the default, 0.5 s), or as soon as ``batch_size`` rows are
    waiting; each batch is one transaction.  While the store is unavailable rows are kept (in
    order, unbounded) and retried with backoff capped at ``max_backoff`` seconds.  When ``run``
    is cancelled (clean shutdown) it makes a final, shielded flush lasting at most
    ``final_flush_timeout`` seconds; rows still unwritten after that are lost and logged as
    such.  A process killed outright loses the rows of the last ``flush_interval`` (plus any
    backlog of an outage).
    """

    def __init__(
        self,
        store: Store,
        *,
        gateway_id: str,
        batch_size: int = 200,
        flush_interval: float = 0.5,
        max_backoff: float = 2.0,
        final_flush_timeout: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        self._store = store
        self._gateway_id = gateway_id
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_backoff = max_backoff
        self._final_flush_timeout = final_flush_timeout
        self._queue: collections.deque[UsageRow] = collections.deque()
        self._wakeup = trio.Event()
        # One writer at a time: a batch is removed from the queue only after
        # it committed, which is only correct with a single writer.
        self._write_lock = trio.Lock()
        self._db_ok = True
        self._backlog_warned = False
        self._written = 0
        self._dead = 0
        self._lost = 0
        self._clamped = 0
        self._normalised = 0
        self._last_flush_ms: float | None = None

    @property
    def pending(self) -> int:
        """Rows recorded but not yet committed to the store."""
        return len(self._queue)

    @property
    def db_ok(self) -> bool:
        """False while the last write attempt found the store unavailable."""
        return self._db_ok

    def stats(self) -> dict[str, Any]:
        """Counters since start, for metrics: ``pending`` (rows in memory), ``written`` (rows
        committed, duplicates included), ``dead_lettered`` (rows the database refused even
        alone, kept in ``usage_dead_letter``), ``lost`` (rows dropped: unwritten at shutdown,
        or refused by the dead-letter table too), ``clamped`` (rows whose token figures were
        clamped), ``normalised`` (rows with any other repaired field), ``last_flush_latency_ms``
        (duration of the last successful batch write, None before one) and ``db_ok``."""
        return {
            "pending": len(self._queue),
            "written": self._written,
            "dead_lettered": self._dead,
            "lost": self._lost,
            "clamped": self._clamped,
            "normalised": self._normalised,
            "last_flush_latency_ms": self._last_flush_ms,
            "db_ok": self._db_ok,
        }

    def record(self, row: UsageRow) -> None:
        """Queue ``row`` for writing.  Never blocks, never touches the DB, never raises for
        odd values: the row is normalised first (``tooti.store.usage.normalise``).

        Rows without a ``gateway_id`` are stamped with this ledger's.
        """
        if not row.gateway_id:
            row = dataclasses.replace(row, gateway_id=self._gateway_id)
        row = normalise(row)
        flags = row.flags.split(",")
        if "usage_clamped" in flags:
            self._clamped += 1
        if "text_normalised" in flags or "value_invalid" in flags or "request_id_generated" in flags:
            self._normalised += 1
        self._queue.append(row)
        waiting = len(self._queue)
        if waiting >= self._batch_size:
            self._wakeup.set()
        if waiting > _BACKLOG_WARNING and not self._backlog_warned:
            self._backlog_warned = True
            log.warning("%d usage rows waiting in memory; is the database down?", waiting)

    async def flush(self) -> None:
        """Write every waiting row now (dead-lettering rows the database refuses).

        Raises StoreUnavailable if the store is down; the rows stay queued.
        """
        async with self._write_lock:
            while self._queue:
                await self._write_batch()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled, then make a final bounded flush."""
        task_status.started()
        backoff = 0.0
        try:
            while True:
                if backoff:
                    await trio.sleep(backoff)
                elif len(self._queue) < self._batch_size:
                    with trio.move_on_after(self._flush_interval):
                        await self._wakeup.wait()
                self._wakeup = trio.Event()
                try:
                    await self.flush()
                    backoff = 0.0
                except StoreUnavailable:
                    backoff = min(max(backoff * 2, 0.1), self._max_backoff)
                except Exception:
                    # A bug (data errors are dead-lettered): keep the rows and the task alive;
                    # the log tells the operator what is wrong.
                    log.exception("writing usage rows failed; will retry")
                    backoff = self._max_backoff
        finally:
            await self._final_flush()

    async def _write_batch(self) -> None:
        batch = list(itertools.islice(self._queue, self._batch_size))
        started = time.perf_counter()
        try:
            await self._write_or_split(batch)
        except StoreUnavailable:
            if self._db_ok:
                self._db_ok = False
                log.warning("database unavailable; %d usage rows waiting", len(self._queue))
            raise
        self._last_flush_ms = (time.perf_counter() - started) * 1000
        # Only now drop them: a failed or interrupted write keeps every row.
        for _ in batch:
            self._queue.popleft()
        if not self._db_ok:
            self._db_ok = True
            log.warning("database available again; %d usage rows still waiting", len(self._queue))
        if len(self._queue) <= _BACKLOG_WARNING // 2:
            self._backlog_warned = False

    async def _write_or_split(self, rows: list[UsageRow]) -> None:
        """Write ``rows``; when the database refuses them for their content, bisect until the
        offenders stand alone and dead-letter those.  StoreUnavailable propagates at any depth
        (nothing is dead-lettered because the database is down), and re-writing halves that
        already committed is harmless (idempotent on ``request_id``)."""
        try:
            await self._store.record_usage(rows)
            self._written += len(rows)
            return
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - each driver refuses content with its own classes
            if len(rows) == 1:
                await self._dead_letter(rows[0], exc)
                return
            log.warning("a batch of %d usage rows was refused (%s); splitting it", len(rows), exc)
        middle = len(rows) // 2
        await self._write_or_split(rows[:middle])
        await self._write_or_split(rows[middle:])

    async def _dead_letter(self, row: UsageRow, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        try:
            await self._store.record_dead_letters([(row, error)])
        except StoreUnavailable:
            raise
        except Exception:
            self._lost += 1
            log.exception("usage row %r refused and could not be dead-lettered; dropped", row.request_id)
            return
        self._dead += 1
        log.error("usage row %r refused by the database, dead-lettered: %s", row.request_id, error)

    async def _final_flush(self) -> None:
        # Shielded so the cancellation that is shutting us down does not
        # abort the flush, but with its own deadline so shutdown stays bounded.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._final_flush_timeout
            backoff = 0.1
            while self._queue:
                try:
                    await self.flush()
                except StoreUnavailable:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                except Exception:
                    log.exception("final usage flush failed")
                    break
        if self._queue:
            self._lost += len(self._queue)
            log.error("shutting down with %d usage rows unwritten", len(self._queue))
