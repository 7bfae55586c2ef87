"""The inference routes as plain ASGI: body in, dispatch, relay out, bill.

No framework per request or per chunk: the body is read once (bounded), parsed once as far as
routing and checking need, and the node's bytes go to the client block by block - under tooti's
own server straight from the tunnel's reader to the socket (``tooti.direct``).

Time limits (``timeouts.*``, see ``docs/http-edge.md``) are tooti's own: before the first byte
a limit is a 504; after it, the stream ends with an SSE error event and ``[DONE]``.

A client hanging up cancels the request wherever it is (queued, waiting, streaming: the node's
exchange is reset, cancelling the backend request); it is never counted against the node.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from tooti import _trace
from tooti.wire import pb

from .. import admin_http
from ..dispatch import Call, Opened, Outcome, Whole
from ..errors import HTTPError
from ..metrics import StreamTimer
from ..relay import NodeFailure
from ..upstream_status import client_status, error_from_answer
from . import body as body_io
from . import responses as out
from .billing import Bill, StreamCounter, bill, max_tokens_of
from .tenancy import plain_scope

if TYPE_CHECKING:
    from ..app import Accounts
    from ..core import Gateway
    from .asgi import RequestContext

log = logging.getLogger("tooti.gateway")


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int
    max_response_bytes: int
    total_timeout: float


@dataclasses.dataclass(slots=True)
class _Progress:
    """What happened to one request, for the ledger and the ending of the stream."""

    gone: bool = False  # the client hung up
    responded: bool = False  # the response is complete; a disconnect now is normal
    started: bool = False  # the response head went out
    status: int = 0
    usage: pb.Usage | None = None
    complete: bool = False
    deltas: int | None = None
    delivered: int = 0
    node: str = ""
    namespace: str = ""
    timer: StreamTimer | None = None  # a stream's delivery times, for the metrics


class Inference:
    def __init__(self, gw: Gateway, accounts: Accounts | None, limits: Limits) -> None:
        self._gw = gw
        self._accounts = accounts
        self._limits = limits

    async def handle(self, ctx: RequestContext, route: tuple[str, int], receive: Any, send: Any) -> None:
        """Serve one inference request (``route`` is (name, wire route))."""
        limits = self._limits
        declared = body_io.declared_length(ctx.headers)
        if declared is not None and declared > limits.max_body_bytes:
            await out.error(send, body_io.too_large(limits.max_body_bytes), ctx.response_headers, close=True)
            return
        try:
            raw = await body_io.read(receive, limits.max_body_bytes)
        except body_io.BodyTooLarge:
            await out.error(send, body_io.too_large(limits.max_body_bytes), ctx.response_headers, close=True)
            return
        except body_io.ClientGone:
            return
        except HTTPError as exc:
            await out.error(send, exc, ctx.response_headers, close=True)
            return
        progress = _Progress()
        work = trio.CancelScope()
        async with _hang_ups_cancel(work, progress, ctx, receive):
            with work:
                await self._serve(ctx, route, raw, send, progress)

    async def _serve(
        self, ctx: RequestContext, route: tuple[str, int], raw: bytes, send: Any, progress: _Progress
    ) -> None:
        name, wire = route
        started = time.perf_counter()
        _trace.bind(ctx.request_id, ctx.header(b"traceparent") or "")  # log lines of this request
        key: Any = None
        call: Call | None = None
        body: dict[str, Any] = {}
        try:
            key = await self._authenticate(ctx)
            body = body_io.parse_object(raw)
            call, stream = self._call(ctx, name, wire, raw, body, key)
            if stream:
                progress.timer = StreamTimer(started)
            with trio.move_on_after(self._limits.total_timeout) as deadline:
                if stream:
                    await self._stream(ctx, call, send, progress)
                else:
                    await self._whole(ctx, call, send, progress)
            if deadline.cancelled_caught and not progress.gone:
                limit = HTTPError(
                    504,
                    f"the request exceeded the gateway's {self._limits.total_timeout:g} s limit",
                    code="timeout",
                )
                progress.status = 504
                progress.responded = True  # before the last send: Hypercorn signals the end inside it
                if progress.started:
                    await out.end_stream(send, limit, responses_api=wire == pb.ROUTE_RESPONSES)
                else:
                    await out.error(send, limit, ctx.response_headers)
        except HTTPError as exc:
            progress.status = exc.status
            if not progress.started:
                progress.responded = True
                await out.error(send, exc, ctx.response_headers)
        finally:
            if call is not None and progress.node:
                self._record(ctx, call, key, body, len(raw), progress, started)
            status = 499 if progress.gone and not progress.responded else (progress.status or 500)
            admin_http.request_done(
                self._gw,
                route=name,
                request_id=ctx.request_id,
                model=call.model_ref if call is not None else "",
                key=key,
                node=progress.node,
                namespace=progress.namespace,
                status=status,
                started=started,
                usage=progress.usage,
                timer=progress.timer,
            )

    async def _authenticate(self, ctx: RequestContext) -> Any:
        if self._accounts is None:
            return None
        return await self._accounts.authenticate(ctx.header(b"authorization"), ctx.header(b"x-api-key"))

    def _call(
        self, ctx: RequestContext, name: str, wire: int, raw: bytes, body: dict[str, Any], key: Any
    ) -> tuple[Call, bool]:
        model_ref = body.get("model")
        if not isinstance(model_ref, str) or not model_ref:
            raise HTTPError(
                400, "'model' is required and must be a string", code="invalid_request", param="model"
            )
        if "\x00" in model_ref or len(model_ref) > 256:
            raise HTTPError(400, "'model' is not a valid model name", code="invalid_request", param="model")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise HTTPError(400, "'stream' must be a boolean", code="invalid_request", param="stream")
        if name == "chat":
            body_io.check_messages(body)
        if name == "embeddings" or wire == pb.ROUTE_PASSTHROUGH:
            stream = stream and wire == pb.ROUTE_PASSTHROUGH
        scope = None
        namespace, model = self._gw.dispatcher.resolve(model_ref)
        if self._accounts is not None and key is not None:
            scope = self._accounts.scope(key)
            # The namespace check for a plain name is the tenancy rule below (public pool plus
            # the key's namespaces); the model allow-list is checked either way.
            ns_for_check = namespace if namespace is not None else next(iter(scope), "") if scope else ""
            self._accounts.check(key, ns_for_check, model)
        allowed = scope if namespace is not None else plain_scope(scope)
        call = Call(
            route=wire,
            method=ctx.method,
            path=ctx.path,
            body=raw,
            model_ref=model_ref,
            request_id=ctx.request_id,
            caller=ctx.caller(key),
            priority=ctx.priority,
            allowed_namespaces=allowed,
            want_usage=self._accounts is not None or stream,
            traceparent=ctx.header(b"traceparent") or "",
        )
        return call, stream

    async def _stream(self, ctx: RequestContext, call: Call, send: Any, progress: _Progress) -> None:
        dispatcher = self._gw.dispatcher
        opened = await dispatcher.open(call)
        progress.node, progress.namespace = opened.entry.peer_id, opened.namespace
        ex = opened.exchange
        if not ex.head.content_type.startswith("text/event-stream"):
            # A backend that answered a stream request with one JSON document: relay it as such.
            await self._relay_document(ctx, opened, send, progress)
            return
        counter = StreamCounter()
        timer = progress.timer or StreamTimer(time.perf_counter())
        outcome = Outcome.NODE_FAILED
        failure: HTTPError | None = None
        headers = [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-tooti-node", opened.entry.peer_id.encode()),
            *ctx.response_headers,
        ]
        try:
            # The head goes out with the first block: until then a failure is still an HTTP
            # error status, not an event inside a 200 stream. timeouts.first_token_sec bounds
            # the first token too (servers send a role-only chunk at once, then think); it is
            # lifted at the first content delta, or at the second block (tool-call deltas).
            first_token = trio.CancelScope(deadline=trio.current_time() + self._first_token_timeout())
            blocks = 0

            def account(block: bytes) -> None:
                nonlocal blocks
                counter.feed(block)
                timer.tick()
                blocks += 1
                if counter.deltas or blocks > 1:
                    first_token.deadline = math.inf
                progress.delivered += len(block)

            direct = ctx.direct

            def sink(block: bytes) -> bool:
                # Runs in the tunnel's reader: one token straight to the client's socket.
                if not direct.write_now(block):
                    return False
                account(block)
                if direct.backlogged:
                    ex.poke()  # part of it waits in the connection's buffer: flush soon
                return True

            try:
                with first_token:
                    async for block in ex.data():
                        if block:
                            account(block)
                        if not progress.started:
                            progress.status, progress.started = 200, True
                            await out.start(send, 200, out.EVENT_STREAM, headers)
                            await out.body(send, block, more=True)
                            if direct is not None:
                                ex.direct(sink)
                            continue
                        await out.body(send, block, more=True)
                if first_token.cancelled_caught:
                    raise trio.TooSlowError
                end = ex.end
                outcome = Outcome.OK
                if end is not None and end.HasField("usage"):
                    progress.usage = end.usage
                if end is not None and end.HasField("error"):
                    failure = error_from_answer(ex.head, b"", end.error)
                else:
                    progress.complete = True
            except NodeFailure as exc:
                dispatcher.metrics.node_failure("mid_stream", opened.entry.peer_id)
                log.warning(
                    "request %s: node %s failed mid-stream: %s", call.request_id, opened.entry.peer_id, exc
                )
                failure = HTTPError(
                    502, "the node serving this request failed mid-stream", code="node_failure"
                )
            except trio.TooSlowError:
                failure = HTTPError(504, "the node stopped sending tokens", code="timeout")
        except BaseException:
            outcome = Outcome.CLIENT_GONE if progress.gone else Outcome.GATEWAY_LIMIT
            raise
        finally:
            ex.direct(None)
            progress.deltas = counter.deltas
            if failure is not None:
                progress.status = failure.status
            with trio.CancelScope(shield=True):
                await dispatcher.finish(opened, outcome)
        if not progress.started:
            if failure is not None:
                raise failure  # nothing sent yet: the client gets it as an HTTP error
            progress.status, progress.started = 200, True
            await out.start(send, 200, out.EVENT_STREAM, headers)
        # Responded before the last send: Hypercorn ends the request (http.disconnect) inside it.
        progress.responded = True
        await out.end_stream(send, failure, responses_api=call.route == pb.ROUTE_RESPONSES)

    def _first_token_timeout(self) -> float:
        return self._gw.dispatcher.first_token_timeout

    async def _relay_document(
        self, ctx: RequestContext, opened: Opened, send: Any, progress: _Progress
    ) -> None:
        ex, limit = opened.exchange, self._limits.max_response_bytes
        chunks: list[bytes] = []
        outcome = Outcome.NODE_FAILED
        try:
            async for block in ex.data():
                progress.delivered += len(block)
                if progress.delivered > limit:
                    outcome = Outcome.GATEWAY_LIMIT
                    raise HTTPError(
                        502, f"the node's answer exceeds {limit} bytes", code="response_too_large"
                    )
                chunks.append(block)
            outcome = Outcome.OK
        except NodeFailure:
            raise HTTPError(502, "the node failed while answering", code="node_failure") from None
        except trio.TooSlowError:
            raise HTTPError(504, "the node stopped answering", code="timeout") from None
        except trio.Cancelled:
            outcome = Outcome.CLIENT_GONE if progress.gone else Outcome.GATEWAY_LIMIT
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self._gw.dispatcher.finish(opened, outcome)
        whole = Whole(ex.head, b"".join(chunks), ex.end, opened.entry, opened.namespace, opened.model)
        await self._send_whole(ctx, whole, send, progress)

    async def _whole(self, ctx: RequestContext, call: Call, send: Any, progress: _Progress) -> None:
        whole = await self._gw.dispatcher.whole(call, max_bytes=self._limits.max_response_bytes)
        progress.node, progress.namespace = whole.entry.peer_id, whole.namespace
        await self._send_whole(ctx, whole, send, progress)

    async def _send_whole(self, ctx: RequestContext, whole: Whole, send: Any, progress: _Progress) -> None:
        end = whole.end
        progress.delivered = len(whole.body)
        if end is not None and end.HasField("usage"):
            progress.usage = end.usage
        if end is not None and end.HasField("error"):
            raise error_from_answer(whole.head, whole.body, end.error)
        progress.status = client_status(whole.head.status)
        content_type = out.content_type_of(whole.head.content_type)
        headers = [(b"x-tooti-node", whole.entry.peer_id.encode()), *ctx.response_headers]
        progress.complete = True
        progress.responded = True  # before the send: Hypercorn ends the request inside it
        await out.whole(send, progress.status, content_type, whole.body, headers)

    def _record(
        self,
        ctx: RequestContext,
        call: Call,
        key: Any,
        body: dict[str, Any],
        request_bytes: int,
        progress: _Progress,
        started: float,
    ) -> None:
        if self._accounts is None:
            return
        figures: Bill = bill(
            progress.usage,
            request_bytes=request_bytes,
            max_tokens=max_tokens_of(body),
            delivered_deltas=progress.deltas,
            delivered_bytes=progress.delivered,
            complete=progress.complete and not progress.gone,
        )
        status = 499 if progress.gone and not progress.responded else (progress.status or 500)
        self._accounts.record(
            request_id=ctx.request_id,
            client_request_id=ctx.client_request_id or "",
            key=key,
            namespace=progress.namespace,
            node_peer_id=progress.node,
            model=call.model_ref,
            prompt_tokens=figures.prompt_tokens,
            completion_tokens=figures.completion_tokens,
            latency_ms=int((time.perf_counter() - started) * 1000),
            status=status,
            usage_flags=figures.flags,
        )


def _hung_up(work: trio.CancelScope, progress: _Progress) -> None:
    if not progress.responded:  # after the response, a disconnect is the normal end
        progress.gone = True
        work.cancel()


@asynccontextmanager
async def _hang_ups_cancel(
    work: trio.CancelScope, progress: _Progress, ctx: RequestContext, receive: Any
) -> AsyncIterator[None]:
    """While inside, a client hanging up cancels ``work``: by tooti's server's callback (one
    watcher for every socket), else by a task awaiting ``http.disconnect`` after the body."""
    direct = ctx.direct
    if direct is not None:
        direct.on_hangup(lambda: _hung_up(work, progress))
        try:
            yield
        finally:
            direct.on_hangup(None)
        return

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        _hung_up(work, progress)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
