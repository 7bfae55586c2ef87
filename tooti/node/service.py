"""The node's inference protocol handler: frames in, backend call, frames out.

One libp2p stream carries one exchange at a time and may carry many in sequence:

    gateway: GatewayFrame(request)            node: ResponseFrame(head), data*, end
    gateway: GatewayFrame(request)  ...       (after the previous end)

A reader task owns the stream's read side for the stream's whole life, so a reset or an
end of stream from the gateway (its client went away) is seen at once and cancels the
exchange, which closes the backend request. Reads are never cancelled half-way, because
py-libp2p's yamux read can drop bytes it already took if cancelled at the wrong await.
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
from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.p2p.host import peer_of
from tooti.wire import pb

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


class InferenceService:
    """Serves ``/tooti/inference`` streams for the models in ``models()``.

    ``allowed_peer(peer_id)`` says whether a peer may use this node (the gateways it joined);
    others have their streams reset. At most ``stats.capacity`` exchanges run at once; the
    next one is answered at once with 503 ``busy`` so the gateway can try another node.
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
            log.warning("inference stream from %s refused: not a gateway this node joined", peer)
            await stream.reset()
            return
        reader = FrameReader(stream)
        current: _Exchange | None = None
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    frame = await reader.read_frame(pb.GatewayFrame)
                except FrameError as exc:
                    self._stats.bad_frames += 1
                    log.warning("bad frame from %s: %s; resetting stream", peer, exc)
                    frame = None
                    await _reset(stream)
                except StreamError:
                    frame = None  # reset by the gateway
                if frame is None:
                    if current is not None:
                        current.scope.cancel()
                    break
                kind = frame.WhichOneof("kind")
                if kind == "request":
                    if current is not None and current.open:
                        self._stats.bad_frames += 1
                        log.warning("peer %s sent a request while one was open; resetting", peer)
                        current.scope.cancel()
                        await _reset(stream)
                        break
                    current = _Exchange()
                    nursery.start_soon(self._exchange, stream, frame.request, current)
                elif kind == "cancel" and current is not None:
                    current.scope.cancel()

    async def _exchange(self, stream: INetStream, req: pb.InferenceRequest, ex: _Exchange) -> None:
        try:
            with ex.scope:
                await self._serve(stream, req)
        except StreamError:
            pass  # the gateway went away; the reader task sees the same and ends the stream
        finally:
            ex.open = False

    async def _serve(self, stream: INetStream, req: pb.InferenceRequest) -> None:
        _trace.bind(req.request_id, req.traceparent)  # this task's log lines and backend headers
        stats = self._stats
        route = _ROUTES.get(req.route)
        if route is None:
            await _fail(stream, 400, "invalid_route", "unknown route")
            return
        if req.model not in self._models():
            await _fail(stream, 404, "model_not_found", f"this node does not serve '{req.model}'")
            return
        if stats.in_flight >= stats.capacity:
            stats.refused_busy += 1
            await _fail(stream, 503, "busy", "node is at capacity")
            return
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            await _fail(stream, 400, "invalid_json", "request body is not a JSON object")
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
                    await stream.write(
                        encode(
                            pb.ResponseFrame(
                                head=pb.ResponseHead(status=reply.status, content_type=reply.content_type)
                            )
                        )
                    )
                    head_sent = True
                    async for block in reply.blocks:
                        if first_at is None:
                            first_at = time.perf_counter()
                        await stream.write(encode(pb.ResponseFrame(data=block)))
                    usage = reply.usage
            if timer.cancelled_caught:
                stats.failed += 1
                await _fail(
                    stream, 504, "deadline_exceeded", "the request's deadline passed", head=not head_sent
                )
                return
        except BackendError as exc:
            stats.failed += 1
            log.warning("request %s: backend error: %s", req.request_id, exc)
            await _fail(stream, exc.status, exc.code, str(exc), head=not head_sent)
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
        await stream.write(encode(pb.ResponseFrame(end=end)))


class _Exchange:
    """The one exchange a stream may have open at a time."""

    __slots__ = ("open", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.open = True


async def _fail(stream: INetStream, status: int, code: str, message: str, *, head: bool = True) -> None:
    """End the exchange with an error: a head (when none was sent yet) and an end frame."""
    frames = b""
    if head:
        frames += encode(
            pb.ResponseFrame(head=pb.ResponseHead(status=status, content_type="application/json"))
        )
    frames += encode(
        pb.ResponseFrame(end=pb.ResponseEnd(error=pb.Error(status=status, code=code, message=message)))
    )
    await stream.write(frames)


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception:  # noqa: BLE001 - best effort on a broken stream
        pass
