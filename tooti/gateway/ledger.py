"""Usage ledger: records served requests off the hot path, in batches.

Request handlers call :meth:`Ledger.record`, which only appends to memory;
the :meth:`Ledger.run` task writes batches to the store.  A database outage
therefore never slows or fails a request: rows wait in memory and are
written when the database comes back.  Writes are idempotent on
``request_id``, so a batch retried after an ambiguous failure (say, a commit
whose acknowledgement was lost) never double counts.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from typing import TYPE_CHECKING

import trio

from ..store import Store, StoreUnavailable, UsageRow

__all__ = ["Ledger"]

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger(__name__)

# Above this many waiting rows we warn (once per episode); memory use is
# then in the tens of MB, which is worth an operator's attention.
_BACKLOG_WARNING = 100_000


class Ledger:
    """Batches :class:`UsageRow`s into ``store`` from a background task.

    Start it with ``nursery.start(ledger.run)``.  Rows are written within
    about ``flush_interval`` seconds, or as soon as ``batch_size`` rows are
    waiting; each batch is one transaction.  While the store is unavailable
    rows are kept (in order, unbounded) and retried with backoff capped at
    ``max_backoff`` seconds.  When ``run`` is cancelled it makes a final,
    shielded flush attempt lasting at most ``final_flush_timeout`` seconds;
    rows still unwritten after that are lost and logged as such.
    """

    def __init__(
        self,
        store: Store,
        *,
        gateway_id: str,
        batch_size: int = 200,
        flush_interval: float = 0.5,
        max_backoff: float = 2.0,
        final_flush_timeout: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
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

    @property
    def pending(self) -> int:
        """Rows recorded but not yet committed to the store."""
        return len(self._queue)

    @property
    def db_ok(self) -> bool:
        """False while the last write attempt found the store unavailable."""
        return self._db_ok

    def record(self, row: UsageRow) -> None:
        """Queue ``row`` for writing.  Never blocks and never touches the DB.

        Rows without a ``gateway_id`` are stamped with this ledger's.
        """
        if not row.gateway_id:
            row = dataclasses.replace(row, gateway_id=self._gateway_id)
        self._queue.append(row)
        waiting = len(self._queue)
        if waiting >= self._batch_size:
            self._wakeup.set()
        if waiting > _BACKLOG_WARNING and not self._backlog_warned:
            self._backlog_warned = True
            log.warning("%d usage rows waiting in memory; is the database down?", waiting)

    async def flush(self) -> None:
        """Write every waiting row now.

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
                    # A bug or a data error: keep the rows and keep the task
                    # alive; the log tells the operator what is wrong.
                    log.exception("writing usage rows failed; will retry")
                    backoff = self._max_backoff
        finally:
            await self._final_flush()

    async def _write_batch(self) -> None:
        batch = list(itertools.islice(self._queue, self._batch_size))
        try:
            await self._store.record_usage(batch)
        except StoreUnavailable:
            if self._db_ok:
                self._db_ok = False
                log.warning("database unavailable; %d usage rows waiting", len(self._queue))
            raise
        # Only now drop them: a failed or interrupted write keeps every row.
        for _ in batch:
            self._queue.popleft()
        if not self._db_ok:
            self._db_ok = True
            log.warning("database available again; %d usage rows still waiting", len(self._queue))
        if len(self._queue) <= _BACKLOG_WARNING // 2:
            self._backlog_warned = False

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
            log.error("shutting down with %d usage rows unwritten", len(self._queue))
