"""The node's half of the inference tunnel: frames in, backend calls, frames out.

A gateway opens one stream (``/tooti/inference/2.0.0``) to this node and runs every exchange on
it (the protocol is specified in ``proto/tooti/v1/tooti.proto`` above ``TunnelFrame``). The
handler task is the stream's only reader for its whole life: it hands each ``open`` to a task of
its own, each ``credit`` to its exchange and each ``reset`` to the exchange's cancel scope, so a
client that went away cancels exactly its backend request. One writer task sends the frames
every exchange queued since its last write in one write. When the stream ends, breaks or the
gateway breaks the protocol, every exchange on it is cancelled (and so are their backend
requests). Reads are never cancelled half-way, because py-libp2p's yamux read can drop bytes it
already took if cancelled at the wrong await.

Per backend read the relay does one slice per 64 KiB and one hand-encoded frame: no JSON, no
protobuf message object (the adapters already coalesce the events one read delivered).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamError

from tooti import _trace
from tooti.p2p.framing import FrameError
from tooti.p2p.host import peer_of, reset_quietly
from tooti.p2p.tunnel import (
    MAX_DATA,
    WINDOW,
    Outbox,
    ProtocolViolation,
    TunnelClosed,
    data_frame,
    frame,
    pieces,
    read_frames,
)
from tooti.wire import MAX_CONCURRENCY, pb

from .backends.base import Backend, BackendError, Request, RouteName
from .stats import NodeStats

log = logging.getLogger("tooti.node")

_ROUTES: dict[int, RouteName] = {
    pb.ROUTE_CHAT: "chat",
    pb.ROUTE_COMPLETIONS: "completions",
    pb.ROUTE_EMBEDDINGS: "embeddings",
    pb.ROUTE_RESPONSES: "responses",
    pb.ROUTE_PASSTHROUGH: "passthrough",
}
#: A request body larger than this (assembled from continuation frames) resets its exchange.
MAX_REQUEST_BODY = 64 * 1024 * 1024
#: Request bodies being assembled on one tunnel, all together; past this the tunnel ends.
MAX_ASSEMBLING = 256 * 1024 * 1024
#: Exchanges open on one tunnel at once (running, waiting for their body, or being refused);
#: past this the gateway is misbehaving and the tunnel ends.
MAX_OPEN = MAX_CONCURRENCY


class InferenceService:
    """Serves inference tunnels for the models in ``models()``.

    ``allowed_peer(peer_id)`` says whether a peer may use this node (the gateways it joined):
    it is asked when a tunnel opens and again for every exchange, so a gateway the node left
    is served nothing more; other peers have their streams reset. At most ``stats.capacity``
    exchanges run at once; the next one is answered at once with 503 ``busy`` so the gateway
    can try another node.
    """

    def __init__(
        self,
        backend: Backend,
        stats: NodeStats,
        *,
        models: Callable[[], set[str]],
        allowed_peer: Callable[[str], bool],
        default_timeout: float = 600.0,
    ) -> None:
        self._backend = backend
        self._stats = stats
        self._models = models
        self._allowed = allowed_peer
        self._default_timeout = default_timeout

    async def handle_stream(self, stream: INetStream) -> None:
        peer = str(peer_of(stream))
        if not self._allowed(peer):
            log.warning("inference tunnel from %s refused: not a gateway this node joined", peer)
            await reset_quietly(stream)
            return
        outbox = Outbox(stream)
        live: dict[int, _Reply] = {}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write, outbox, stream)
                try:
                    await self._read(stream, peer, outbox, live, nursery)
                except (FrameError, ProtocolViolation) as exc:
                    self._stats.bad_frames += 1
                    log.warning("bad frame on the tunnel from %s (%s); resetting it", peer, exc)
                except StreamError:
                    pass  # reset by the gateway
                finally:
                    nursery.cancel_scope.cancel()  # the tunnel is over: cancel every exchange
        finally:
            log.info("tunnel from %s closed: %d frames in %d writes", peer, outbox.frames, outbox.writes)
            outbox.close()
            await reset_quietly(stream)

    async def _read(
        self, stream: INetStream, peer: str, outbox: Outbox, live: dict[int, _Reply], nursery: trio.Nursery
    ) -> None:
        last_rid = 0
        bodies = _Bodies()
        async for batch in read_frames(stream):
            for f in batch:
                rid = f.request
                kind = f.WhichOneof("kind")
                if kind == "credit":
                    reply = live.get(rid)
                    if reply is not None:
                        reply.grant(f.credit)
                elif kind == "open":
                    if rid <= last_rid or len(live) >= MAX_OPEN:
                        raise ProtocolViolation("open with a stale request number, or too many open")
                    last_rid = rid
                    if not self._allowed(peer):
                        raise ProtocolViolation("peer is no longer a gateway this node joined")
                    live[rid] = _Reply(rid, outbox)
                    if f.more:
                        bodies.start(rid, f.open)
                    else:
                        nursery.start_soon(self._exchange, live, live[rid], f.open)
                elif kind == "data":
                    try:
                        req = bodies.add(rid, f.data, more=f.more)
                    except _TooLarge:
                        live.pop(rid).reset("request body too large")
                        continue
                    if req is not None:
                        nursery.start_soon(self._exchange, live, live[rid], req)
                elif kind == "reset":
                    bodies.drop(rid)
                    reply = live.pop(rid, None)
                    if reply is not None:
                        reply.cancel()
                else:
                    raise ProtocolViolation(f"unexpected {kind} frame from a gateway")

    async def _exchange(self, live: dict[int, _Reply], out: _Reply, req: pb.InferenceRequest) -> None:
        try:
            with out.scope:
                await self._serve(out, req)
        except TunnelClosed:
            pass  # the tunnel ended; the handler cancels what is left
        except Exception:  # one exchange's bug must not end the others on its tunnel
            log.exception("request %s failed unexpectedly", req.request_id)
            out.reset("internal error on the node")
        finally:
            if live.get(out.rid) is out:
                del live[out.rid]

    async def _serve(self, out: _Reply, req: pb.InferenceRequest) -> None:
        _trace.bind(req.request_id, req.traceparent)  # this task's log lines and backend headers
        stats = self._stats
        route = _ROUTES.get(req.route)
        if route is None:
            await _fail(out, 400, "invalid_route", "unknown route")
            return
        if req.model not in self._models():
            await _fail(out, 404, "model_not_found", f"this node does not serve '{req.model}'")
            return
        if stats.in_flight >= stats.capacity:
            stats.refused_busy += 1
            await _fail(out, 503, "busy", "node is at capacity")
            return
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            await _fail(out, 400, "invalid_json", "request body is not a JSON object")
            return
        client_usage = (
            bool((body.get("stream_options") or {}).get("include_usage"))
            if isinstance(body.get("stream_options"), dict)
            else False
        )
        body["model"] = req.model
        # stream_options exists on the chat and completions routes only.
        if req.want_usage and body.get("stream") and route in ("chat", "completions"):
            opts: dict[str, object] = (
                body["stream_options"] if isinstance(body.get("stream_options"), dict) else {}
            )
            body["stream_options"] = {**opts, "include_usage": True}

        deadline = (
            req.deadline_unix_ms / 1000 if req.deadline_unix_ms else time.time() + self._default_timeout
        )
        stats.in_flight += 1
        started = time.perf_counter()
        head_sent = False
        first_at: float | None = None
        try:
            with trio.move_on_after(max(0.0, deadline - time.time())) as timer:
                request = Request(route, body, client_usage, method=req.method or "POST", path=req.path)
                async with self._backend.open(request) as reply:
                    out.head(pb.ResponseHead(status=reply.status, content_type=reply.content_type))
                    head_sent = True
                    async for block in reply.blocks:
                        if first_at is None:
                            first_at = time.perf_counter()
                        await out.data(block)
                    usage = reply.usage
            if timer.cancelled_caught:
                stats.failed += 1
                await _fail(
                    out, 504, "deadline_exceeded", "the request's deadline passed", head=not head_sent
                )
                return
        except BackendError as exc:
            stats.failed += 1
            log.warning("request %s: backend error: %s", req.request_id, exc)
            await _fail(out, exc.status, exc.code, str(exc), head=not head_sent)
            return
        finally:
            stats.in_flight -= 1
        stats.served += 1
        end = pb.ResponseEnd()
        if usage is not None:
            end.usage.CopyFrom(
                pb.Usage(
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    total_tokens=usage.total_tokens,
                )
            )
            if first_at is not None and body.get("stream"):
                stats.observe(
                    (first_at - started) * 1000, usage.completion_tokens, time.perf_counter() - first_at
                )
        out.end(end)


class _TooLarge(Exception):
    """A request body outgrew MAX_REQUEST_BODY."""


class _Bodies:
    """Request bodies arriving in pieces (``open`` with ``more``, then data frames), bounded per
    request (the exchange is reset) and per tunnel (the tunnel ends)."""

    __slots__ = ("_open", "_size", "total")

    def __init__(self) -> None:
        self._open: dict[int, tuple[pb.InferenceRequest, list[bytes]]] = {}
        self._size: dict[int, int] = {}
        self.total = 0

    def start(self, rid: int, req: pb.InferenceRequest) -> None:
        self._open[rid] = (req, [req.body])
        self._size[rid] = 0
        self._grow(rid, len(req.body))

    def add(self, rid: int, data: bytes, *, more: bool) -> pb.InferenceRequest | None:
        """Append a piece; the whole request once its last piece arrived, else None. Pieces
        of a request not being assembled (reset meanwhile) are dropped."""
        entry = self._open.get(rid)
        if entry is None:
            return None
        if self._size[rid] + len(data) > MAX_REQUEST_BODY:
            self.drop(rid)
            raise _TooLarge
        entry[1].append(data)
        self._grow(rid, len(data))
        if more:
            return None
        self.drop(rid)
        req, parts = entry
        req.body = b"".join(parts)
        return req

    def drop(self, rid: int) -> None:
        if self._open.pop(rid, None) is not None:
            self.total -= self._size.pop(rid)

    def _grow(self, rid: int, n: int) -> None:
        self._size[rid] += n
        self.total += n
        if self.total > MAX_ASSEMBLING:
            raise ProtocolViolation("too much request body being assembled on one tunnel")


class _Reply:
    """Where one exchange's answer goes: frames on the tunnel, within the exchange's window."""

    __slots__ = ("_credit", "_outbox", "rid", "scope", "window")

    def __init__(self, rid: int, outbox: Outbox) -> None:
        self.rid = rid
        self._outbox = outbox
        self.window = WINDOW
        self._credit = trio.Event()
        self.scope = trio.CancelScope()

    def head(self, head: pb.ResponseHead) -> None:
        self._outbox.put(frame(pb.TunnelFrame(request=self.rid, head=head)))

    async def data(self, block: bytes) -> None:
        """Send ``block``, waiting for credit when the gateway has not consumed enough yet
        (its client reads slowly): only this exchange waits, and its backend read with it."""
        for piece in pieces(block, MAX_DATA) if len(block) > MAX_DATA else (block,):
            while self.window < len(piece):
                self._credit = trio.Event()
                await self._credit.wait()
            self.window -= len(piece)
            await self._outbox.put_wait(data_frame(self.rid, piece))

    def end(self, end: pb.ResponseEnd) -> None:
        self._outbox.put(frame(pb.TunnelFrame(request=self.rid, end=end)))

    def grant(self, amount: int) -> None:
        self.window += amount
        if self.window > WINDOW:
            raise ProtocolViolation("credit beyond the window")
        self._credit.set()

    def cancel(self) -> None:
        self.scope.cancel()

    def reset(self, reason: str) -> None:
        self.scope.cancel()
        try:
            self._outbox.put(frame(pb.TunnelFrame(request=self.rid, reset=pb.TunnelReset(reason=reason))))
        except TunnelClosed:
            pass


async def _write(outbox: Outbox, stream: INetStream) -> None:
    try:
        await outbox.run()
    except StreamError:
        outbox.close()
        await reset_quietly(stream)  # the reader sees the reset and ends the tunnel


async def _fail(out: _Reply, status: int, code: str, message: str, *, head: bool = True) -> None:
    """End the exchange with an error: a head (when none was sent yet) and an end frame."""
    if head:
        out.head(pb.ResponseHead(status=status, content_type="application/json"))
    out.end(pb.ResponseEnd(error=pb.Error(status=status, code=code, message=message)))
