"""Admission: which request gets the next free slot on a node, and who waits.

A request asks for a slot on one of its candidate nodes. When one has room the slot is
granted at once (the node's ``local_in_flight`` is raised here, so two requests can never be
granted the same last slot). When none has, the request waits in the gateway's queue until a
slot frees, its deadline passes (then ``QueueTimeout``: the client gets 503 + Retry-After) or
its client goes away (the waiter is removed at once, and never reaches a node).

Fairness: waiting requests are grouped by caller (the API key; in open mode the presented
credential). Freed slots go round-robin across callers, least recently served first (a caller
that gets a slot goes to the back; a caller that starts waiting goes in front of the one served
last), so a caller with 200 queued requests delays another caller's single request by no grant
at all, and in general by at most one grant per other caller with waiters. Within a caller,
higher ``priority`` first, then FIFO.

Slots free in three ways: an exchange ends (``release``), a node joins or reports in, a
cool-down or "busy" mark expires. The first wakes the queue at once; the others are noticed by
a waiter re-checking every ``_RECHECK`` seconds (no task of its own is needed).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable

import trio

from .registry import NodeEntry
from .router import choose

_RECHECK = 0.25  # how often a waiter looks again without being woken (seconds)

Candidates = Callable[[], list[NodeEntry]]
Pick = Callable[[list[NodeEntry], set[str]], NodeEntry | None]


class QueueTimeout(Exception):
    """The request waited its whole queue deadline for a slot."""


class QueueFull(Exception):
    """The queue (``per_key`` False) or the caller's share of it (``per_key`` True) is full."""

    def __init__(self, *, per_key: bool) -> None:
        super().__init__("caller's queue share is full" if per_key else "queue is full")
        self.per_key = per_key


class _Waiter:
    __slots__ = ("caller", "candidates", "entry", "event", "exclude", "group", "order")

    def __init__(
        self, caller: str, group: Hashable, candidates: Candidates, exclude: set[str], order: tuple[int, int]
    ) -> None:
        self.caller = caller
        self.group = group
        self.candidates = candidates
        self.exclude = exclude
        self.order = order  # (-priority, arrival): smaller goes first within a caller
        self.entry: NodeEntry | None = None
        self.event = trio.Event()


class Admission:
    def __init__(
        self,
        *,
        timeout: float,
        max_queued: int,
        max_queued_per_key: int,
        pick: Pick = choose,
    ) -> None:
        self.timeout = timeout
        self.max_queued = max_queued
        self.max_queued_per_key = max_queued_per_key
        self._pick = pick
        self._queues: dict[str, list[_Waiter]] = {}
        self._ring: deque[str] = deque()  # callers with waiters, next to be served first
        self._arrivals = itertools.count()
        self._depth = 0
        self._last_pump = 0.0
        self._last_served = ""
        self.timed_out = 0  # counters for /v1/network/nodes and metrics
        self.abandoned = 0

    @property
    def depth(self) -> int:
        """Requests waiting now."""
        return self._depth

    def depth_by_group(self) -> dict[str, int]:
        """Waiting requests per group (the model as the client named it)."""
        out: dict[str, int] = {}
        for waiters in self._queues.values():
            for w in waiters:
                out[str(w.group)] = out.get(str(w.group), 0) + 1
        return out

    async def acquire(
        self,
        caller: str,
        group: Hashable,
        candidates: Candidates,
        exclude: set[str],
        *,
        priority: int = 0,
        deadline: float | None = None,
    ) -> NodeEntry:
        """A node with a slot reserved for this request (``release`` it when done).

        ``group`` names what the candidates serve (requests of one group compete for the same
        nodes). ``deadline`` is monotonic; None means ``timeout`` from now. Raises QueueFull at
        once when the queue has no room, QueueTimeout when the deadline passes."""
        if not self._queues:
            entry = self._pick(candidates(), exclude)
            if entry is not None:
                entry.local_in_flight += 1
                self._last_served = caller
                return entry
        queue = self._queues.get(caller)
        if self._depth >= self.max_queued:
            raise QueueFull(per_key=False)
        if queue is not None and len(queue) >= self.max_queued_per_key:
            raise QueueFull(per_key=True)
        waiter = _Waiter(caller, group, candidates, exclude, (-priority, next(self._arrivals)))
        self._enqueue(waiter)
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        try:
            self.pump()
            while waiter.entry is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.timed_out += 1
                    raise QueueTimeout
                with trio.move_on_after(min(left, _RECHECK)):
                    await waiter.event.wait()
                if waiter.entry is None and time.monotonic() - self._last_pump >= _RECHECK:
                    self.pump()  # something may have freed without a release (see module doc)
            return waiter.entry
        except BaseException:
            if waiter.entry is not None:
                # Granted, but cancelled before the grant could be used: give it back.
                self.release(waiter.entry)
            else:
                self._remove(waiter)
                self.abandoned += 1
            raise

    def release(self, entry: NodeEntry) -> None:
        """Give back a slot ``acquire`` granted, and hand it to the next waiter."""
        entry.local_in_flight = max(0, entry.local_in_flight - 1)
        if self._queues:
            self.pump()

    def pump(self) -> None:
        """Grant every slot that is free now, round-robin across callers: callers are kept
        least recently served first, and a caller that gets a slot goes to the back."""
        self._last_pump = time.monotonic()
        progressed = True
        while progressed and self._ring:
            progressed = False
            full: set[Hashable] = set()  # groups found without a slot in this pass
            for caller in list(self._ring):
                queue = self._queues.get(caller)
                if queue is None:
                    continue
                if self._grant_one(queue, full):
                    progressed = True
                    self._last_served = caller
                    if caller in self._queues:
                        self._ring.remove(caller)
                        self._ring.append(caller)

    def _grant_one(self, waiters: list[_Waiter], full: set[Hashable]) -> bool:
        for w in waiters:
            if w.group in full and not w.exclude:
                continue
            entry = self._pick(w.candidates(), w.exclude)
            if entry is None:
                if not w.exclude:
                    full.add(w.group)
                continue
            entry.local_in_flight += 1
            w.entry = entry
            self._remove(w)
            w.event.set()
            return True
        return False

    def _enqueue(self, w: _Waiter) -> None:
        queue = self._queues.get(w.caller)
        if queue is None:
            queue = self._queues[w.caller] = []
            # A new caller has been served less recently than the caller just served (at the
            # back of the ring): it goes in front of that one.
            if self._ring and self._ring[-1] == self._last_served:
                self._ring.insert(len(self._ring) - 1, w.caller)
            else:
                self._ring.append(w.caller)
        # Insert in (priority, arrival) order; a new waiter of equal priority goes last.
        i = len(queue)
        while i > 0 and queue[i - 1].order > w.order:
            i -= 1
        queue.insert(i, w)
        self._depth += 1

    def _remove(self, w: _Waiter) -> None:
        queue = self._queues.get(w.caller)
        if queue is None or w not in queue:
            return
        queue.remove(w)
        self._depth -= 1
        if not queue:
            del self._queues[w.caller]
            self._ring.remove(w.caller)
