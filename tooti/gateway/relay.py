"""Exchanges with nodes over one inference tunnel per node (the gateway's half of the tunnel).

The protocol is specified in ``proto/tooti/v1/tooti.proto`` (above ``TunnelFrame``) and its
shared machinery is ``tooti.p2p.tunnel``. Here: :class:`StreamPool` keeps one tunnel per node,
opened on first use, and runs its reader and writer tasks (``run`` must be running in a nursery
for exchanges to start); :func:`start_exchange` opens an exchange on it and waits for the head;
:class:`Exchange` hands out the body and gives credit back as the HTTP side consumes it.

A client that stops reading stops crediting its own exchange only: the node's sender for it
waits, while the tunnel's single reader keeps draining every other exchange's frames.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost, INetStream
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from tooti.p2p import protocols
from tooti.p2p.host import raise_stream_cap, reset_quietly
from tooti.p2p.tunnel import (
    CREDIT_EVERY,
    MAX_DATA,
    WINDOW,
    Outbox,
    ProtocolViolation,
    TunnelClosed,
    credit_frame,
    data_frame,
    frame,
    pieces,
    read_frames,
    reset_frame,
)
from tooti.wire import pb

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.gateway")

#: How often the watchdog looks for exchanges past their idle or first-byte timeout.
_WATCHDOG_S = 0.25

__all__ = ["Exchange", "NodeFailure", "StreamPool", "reset_quietly", "start_exchange"]


class NodeFailure(Exception):
    """The node (or the path to it) failed: unreachable, reset, truncated, malformed."""


class _Pending:
    """The gateway's state of one exchange: what the tunnel's reader has delivered so far.

    The one task consuming it parks in ``wait`` and the reader reschedules it directly: a token
    costs no Event and no cancel scope. Idle timeouts are enforced by the pool's watchdog
    (``StreamPool.run``), which marks an exchange whose consumer has waited too long. With a
    ``sink`` the reader hands data to it and does not wake the consumer at all (see
    :meth:`Exchange.direct`).
    """

    __slots__ = (
        "blocks",
        "deadline",
        "end",
        "failure",
        "head",
        "outstanding",
        "patience",
        "poked",
        "rid",
        "sink",
        "timed_out",
        "uncredited",
        "waiter",
    )

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.head: pb.ResponseHead | None = None
        self.blocks: list[bytes] = []
        self.end: pb.ResponseEnd | None = None
        self.failure: str | None = None
        self.waiter: trio.lowlevel.Task | None = None
        self.deadline = math.inf  # while waiting: when the watchdog gives up on it
        self.timed_out = False
        self.outstanding = 0  # data bytes received and not yet credited back
        self.uncredited = 0  # of those, consumed by the HTTP side and not yet credited
        self.sink: Callable[[bytes], bool] | None = None
        self.patience = math.inf
        self.poked = False

    def wake(self) -> None:
        task = self.waiter
        if task is not None:
            self.waiter = None
            trio.lowlevel.reschedule(task)

    def fail(self, why: str) -> None:
        if self.failure is None and self.end is None:
            self.failure = why
        self.wake()

    async def wait(self, patience: float) -> None:
        """Until the reader delivers something (or fails the exchange); raises
        trio.TooSlowError when the watchdog saw nothing arrive for ``patience`` seconds."""
        self.patience = patience
        self.deadline = trio.current_time() + patience
        self.waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        self.deadline = math.inf
        if self.timed_out:
            raise trio.TooSlowError


class _Tunnel:
    """One tunnel stream to one node and the exchanges open on it."""

    def __init__(self, pool: StreamPool, peer_id: str, stream: INetStream) -> None:
        self.pool = pool
        self.peer_id = peer_id
        self.stream = stream
        self.outbox = Outbox(stream)
        self.open: dict[int, _Pending] = {}
        self.next_rid = 1
        self.alive = True
        self.scope = trio.CancelScope()

    async def run(self, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        why = "tunnel to node closed"
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write)
                task_status.started()
                try:
                    why = await self._read()
                except StreamError as exc:
                    why = f"tunnel to node broke: {type(exc).__name__}"
                except Exception as exc:  # noqa: BLE001 - this task runs in the pool's nursery: nothing
                    # may escape it (a crash there would take the gateway down), whatever libp2p raises
                    why = f"tunnel to node broke: {type(exc).__name__}: {exc}"
                    log.warning("tunnel to %s: %s", self.peer_id, why)
                nursery.cancel_scope.cancel()
        self._die(why)
        await reset_quietly(self.stream)

    async def _write(self) -> None:
        try:
            await self.outbox.run()
        except Exception as exc:  # noqa: BLE001 - as in run(): end this tunnel, never the pool
            self._die(f"tunnel write failed: {type(exc).__name__}")
            self.scope.cancel()

    async def _read(self) -> str:
        async for batch in read_frames(self.stream):
            now = 0.0
            for f in batch:
                p = self.open.get(f.request)
                if p is None:
                    continue  # crossed our reset on the wire
                kind = f.WhichOneof("kind")
                if kind == "data":
                    data = f.data
                    n = len(data)
                    if p.head is None or p.end is not None or p.outstanding + n > WINDOW:
                        raise ProtocolViolation("data outside an open window")
                    p.outstanding += n
                    sink = p.sink
                    if sink is not None and not p.blocks and sink(data):
                        # Written straight to the client: credit it, keep the idle timer
                        # fed, and leave the consumer parked.
                        self.credit(p, n)
                        if p.waiter is not None:
                            now = now or trio.current_time()
                            p.deadline = now + p.patience
                        continue
                    p.blocks.append(data)
                elif kind == "head":
                    if p.head is not None:
                        raise ProtocolViolation("second head")
                    p.head = f.head
                elif kind == "end":
                    if p.head is None:
                        raise ProtocolViolation("end before head")
                    p.end = f.end
                elif kind == "reset":
                    p.fail(f"node reset the exchange: {f.reset.reason[:200]}")
                    del self.open[f.request]
                else:
                    raise ProtocolViolation(f"unexpected {kind} frame from a node")
                p.wake()
        return "node closed the tunnel"

    def _die(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self.outbox.close()
        self.pool._dropped(self)
        pending, self.open = self.open, {}
        for p in pending.values():
            p.fail(why)
        if pending:
            log.warning("tunnel to %s ended with %d exchanges open: %s", self.peer_id, len(pending), why)

    async def begin(self, request: pb.InferenceRequest) -> _Pending:
        """Register a new exchange and queue its open frame (and body continuation frames)."""
        if not self.alive:
            raise NodeFailure("tunnel to node closed")
        rid = self.next_rid
        self.next_rid += 1
        p = _Pending(rid)
        self.open[rid] = p
        body = request.body
        try:
            if len(body) <= MAX_DATA:
                self.outbox.put(frame(pb.TunnelFrame(request=rid, open=request)))
            else:
                parts = pieces(body)
                first = pb.InferenceRequest()
                first.CopyFrom(request)
                first.body = parts[0]
                self.outbox.put(frame(pb.TunnelFrame(request=rid, open=first, more=True)))
                for i, part in enumerate(parts[1:], 2):
                    # put_wait: a large body interleaves with other exchanges' frames.
                    await self.outbox.put_wait(data_frame(rid, part, more=i < len(parts)))
        except TunnelClosed:
            raise NodeFailure("tunnel to node closed") from None
        except BaseException:
            self.abandon(p)  # cancelled half-way through the body: the node drops what it has
            raise
        return p

    def credit(self, p: _Pending, consumed: int) -> None:
        p.uncredited += consumed
        if p.uncredited >= CREDIT_EVERY and p.end is None and self.alive:
            self.outbox.put(credit_frame(p.rid, p.uncredited))
            p.outstanding -= p.uncredited
            p.uncredited = 0

    def abandon(self, p: _Pending) -> None:
        """Forget an exchange; unless it ended, tell the node (which cancels its backend request)."""
        if self.open.pop(p.rid, None) is not None and p.end is None and p.failure is None and self.alive:
            self.outbox.put(reset_frame(p.rid, "gateway abandoned the exchange"))

    def finished(self, p: _Pending) -> None:
        self.open.pop(p.rid, None)


class StreamPool:
    """One tunnel per node, opened on first use. ``run()`` owns the tunnels' tasks: start it in
    the gateway's nursery (exchanges fail with NodeFailure until it runs)."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        self._tunnels: dict[str, _Tunnel] = {}
        self._opening: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._watchdog()
            finally:
                self._nursery = None

    async def _watchdog(self) -> None:
        """Time out exchanges whose consumer has waited past its deadline. One pass per
        ``_WATCHDOG_S`` over every open exchange, instead of a cancel scope per token: a
        timeout fires up to that much late, which for timeouts of seconds does not matter."""
        while True:
            await trio.sleep(_WATCHDOG_S)
            now = trio.current_time()
            for t in list(self._tunnels.values()):
                for p in list(t.open.values()):
                    if p.waiter is not None and p.deadline <= now:
                        p.timed_out = True
                        p.wake()

    async def tunnel(self, peer_id: str) -> _Tunnel:
        """The live tunnel to ``peer_id``, opening one if needed. Raises NodeFailure."""
        t = self._tunnels.get(peer_id)
        if t is not None and t.alive:
            return t
        lock = self._opening.setdefault(peer_id, trio.Lock())
        async with lock:  # one opener per node; the others wait for its tunnel
            t = self._tunnels.get(peer_id)
            if t is not None and t.alive:
                return t
            if self._nursery is None:
                raise NodeFailure("the relay is not running")
            try:
                stream = await self._host.new_stream(ID.from_base58(peer_id), [protocols.INFERENCE])
            except Exception as exc:  # noqa: BLE001 - libp2p raises many kinds here
                raise NodeFailure(f"cannot open a tunnel: {type(exc).__name__}: {exc}") from None
            raise_stream_cap(stream)
            t = _Tunnel(self, peer_id, stream)
            self._tunnels[peer_id] = t
            await self._nursery.start(t.run)
            return t

    def _dropped(self, t: _Tunnel) -> None:
        if self._tunnels.get(t.peer_id) is t:
            del self._tunnels[t.peer_id]

    def forget(self, peer_id: str) -> None:
        """A node went away: end its tunnel (its open exchanges fail with NodeFailure)."""
        t = self._tunnels.pop(peer_id, None)
        self._opening.pop(peer_id, None)
        if t is not None:
            t.scope.cancel()


class Exchange:
    """One request/response with a node, from after its head to its end.

    Iterate ``data()`` for the body bytes, in order: everything that arrived since the last
    block comes out as one block (when the HTTP side falls behind, one chunk for several
    tokens), and a block is never held back waiting for more. Afterwards ``end`` holds the
    node's end frame. ``data()`` raises NodeFailure when the exchange breaks before its end
    (tunnel gone, node reset) and ``trio.TooSlowError`` when nothing arrives within
    ``idle_timeout``. ``close()`` forgets the exchange; one that did not end is reset, which
    cancels the backend request on the node (and nothing else on the tunnel).
    """

    def __init__(self, tunnel: _Tunnel, pending: _Pending, idle_timeout: float) -> None:
        self._tunnel = tunnel
        self._p = pending
        self.peer_id = tunnel.peer_id
        assert pending.head is not None
        self.head: pb.ResponseHead = pending.head
        self._idle_timeout = idle_timeout

    @property
    def end(self) -> pb.ResponseEnd | None:
        return self._p.end

    def direct(self, sink: Callable[[bytes], bool] | None) -> None:
        """From now on the tunnel's reader offers each block to ``sink`` as it arrives (None:
        stop). ``sink(block)`` returns True when it took the block (wrote it to the client);
        the block is then credited at once and ``data()`` never sees it. When it returns
        False (the client's socket is full), that block and every later one queue for
        ``data()`` as without a sink, until the queue is drained. ``sink`` runs in the
        reader's task: it must not block, and must not raise."""
        self._p.sink = sink

    def poke(self) -> None:
        """Wake the consumer: ``data()`` yields an empty block if it has nothing else (a sink
        that left part of a block in its own buffer asks for a flush this way)."""
        self._p.poked = True
        self._p.wake()

    async def data(self) -> AsyncIterator[bytes]:
        p, tunnel = self._p, self._tunnel
        while True:
            blocks = p.blocks
            if blocks:
                p.blocks = []
                p.poked = False
                block = blocks[0] if len(blocks) == 1 else b"".join(blocks)
                tunnel.credit(p, len(block))
                yield block
                continue
            if p.end is not None:
                tunnel.finished(p)
                return
            if p.failure is not None:
                raise NodeFailure(p.failure)
            if p.poked:
                p.poked = False
                yield b""
                continue
            await p.wait(self._idle_timeout)

    async def close(self) -> None:
        self._tunnel.abandon(self._p)


async def start_exchange(
    pool: StreamPool,
    peer_id: str,
    request: pb.InferenceRequest,
    *,
    first_byte_timeout: float,
    idle_timeout: float,
) -> Exchange:
    """Send ``request`` to ``peer_id`` on its tunnel and wait for the head.

    Raises NodeFailure when the node cannot be reached or the exchange breaks before its head
    (safe to retry elsewhere: the client has seen nothing), ``trio.TooSlowError`` after
    ``first_byte_timeout`` (the exchange is reset, cancelling it on the node).
    """
    tunnel = await pool.tunnel(peer_id)
    p = await tunnel.begin(request)
    try:
        while p.head is None:
            if p.failure is not None:
                raise NodeFailure(p.failure)
            await p.wait(first_byte_timeout)
    except BaseException:
        tunnel.abandon(p)
        raise
    return Exchange(tunnel, p, idle_timeout)
