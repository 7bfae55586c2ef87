"""The gateway's HTTP face: OpenAI's routes on Quart (trio flavour).

Each inference request's body is read once and parsed once, as far as routing needs
(``model``, ``stream``, ``stream_options``); the bytes go to the node untouched. Streams are
relayed frame by frame, never buffered. Every response carries ``X-Request-ID``; every error
is an OpenAI error document.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tooti.wire import pb

from . import admin_http
from .admin_http import AdminAccess
from .core import Gateway
from .errors import HTTPError, error_body, sse_error_event
from .metrics import StreamTimer
from .registry import NodeEntry
from .relay import Exchange, NodeFailure

log = logging.getLogger("tooti.gateway")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DONE = b"data: [DONE]\n\n"
_ROUTES = {"chat": pb.ROUTE_CHAT, "completions": pb.ROUTE_COMPLETIONS, "embeddings": pb.ROUTE_EMBEDDINGS}


class Accounts(Protocol):
    """What the app needs from the accounts layer (auth + usage); None means open mode."""

    async def authenticate(self, authorization: str | None, x_api_key: str | None) -> Any: ...
    def scope(self, key: Any) -> set[str] | None: ...
    def check(self, key: Any, namespace: str, model: str) -> None: ...
    def record(
        self,
        *,
        request_id: str,
        key: Any,
        namespace: str,
        node_peer_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
        status: int,
    ) -> None: ...
    def health(self) -> dict[str, Any]: ...
    async def usage(self, key: Any, since: datetime | None) -> list[dict[str, Any]]: ...


def create_app(
    gw: Gateway, *, max_body_bytes: int, accounts: Accounts | None = None, admin: AdminAccess | None = None
) -> QuartTrio:
    app = QuartTrio("tooti.gateway")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    @app.before_request
    async def _request_id() -> None:
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if _REQUEST_ID_OK.match(rid) else f"req_{uuid.uuid4().hex}"

    @app.after_request
    async def _stamp(response: Response) -> Response:
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        return response

    @app.errorhandler(HTTPError)
    async def _our_error(exc: HTTPError) -> Response:
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    async def _werkzeug_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = {
            413: f"request body exceeds {max_body_bytes} bytes",
            404: f"no route {request.method} {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
        }.get(status, exc.description or "")
        return _error_response(HTTPError(status, message, code={413: "request_too_large"}.get(status)))

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(HTTPError(500, "internal error", code="internal_error"))

    @app.get("/healthz")
    async def healthz() -> Response:
        live = gw.registry.live()
        body: dict[str, Any] = {
            "status": "ok",
            "peer_id": gw.peer_id,
            "nodes": len(live),
            "models": len(gw.registry.model_ids()),
        }
        if accounts is not None:
            db = accounts.health()
            body["database"] = db
            if not db.get("ok", True):
                body["status"] = "degraded"
        return _json(body)

    @app.get("/v1/models")
    async def list_models() -> Response:
        await _auth(accounts)
        now = int(time.time())
        data = [
            {"id": mid, "object": "model", "created": now, "owned_by": owner}
            for mid, owner in gw.registry.model_ids()
        ]
        return _json({"object": "list", "data": data})

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        await _auth(accounts)
        for mid, owner in gw.registry.model_ids():
            if mid == model_id:
                return _json({"id": mid, "object": "model", "created": int(time.time()), "owned_by": owner})
        raise HTTPError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")

    @app.get("/v1/network/nodes")
    async def network_nodes() -> Response:
        await _auth(accounts)
        now = time.monotonic()
        nodes = [
            {
                "peer_id": e.peer_id,
                "name": e.name,
                "namespace": e.namespace,
                "models": sorted(e.models),
                "capacity": e.capacity,
                "in_flight": e.load(),
                "healthy": e.healthy,
                "ttft_ms": round(e.ttft_ms, 1),
                "tokens_per_s": round(e.tps, 1),
                "rtt_ms": None if e.rtt_ms is None else round(e.rtt_ms, 2),
                "last_heartbeat_s": round(now - e.last_seen, 2),
                "live": now - e.last_seen <= gw.registry.ttl,
                "failures": e.failures,
                "version": e.version,
            }
            for e in gw.registry.all()
        ]
        return _json(
            {
                "object": "list",
                "gateway": gw.peer_id,
                "data": nodes,
                "heartbeats": {**gw.heartbeats, "rejected": gw.registry.rejected_heartbeats},
            }
        )

    @app.get("/v1/usage")
    async def usage() -> Response:
        key = await _auth(accounts)
        if accounts is None:
            raise HTTPError(
                404, "usage is recorded only when the gateway runs with API keys", code="not_found"
            )
        since_arg = request.args.get("since")
        since = None
        if since_arg:
            try:
                since = datetime.fromisoformat(since_arg).replace(tzinfo=UTC)
            except ValueError:
                raise HTTPError(
                    400, "'since' must be a date, YYYY-MM-DD", code="invalid_request", param="since"
                ) from None
        return _json({"object": "list", "data": await accounts.usage(key, since)})

    async def infer(route: str) -> Response:
        started = time.perf_counter()
        key = await _auth(accounts)
        raw = cast(bytes, await request.get_data(cache=False, as_text=False))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "request body must be a JSON object", code="invalid_json")
        model_ref = body.get("model")
        if not isinstance(model_ref, str) or not model_ref:
            raise HTTPError(
                400, "'model' is required and must be a string", code="invalid_request", param="model"
            )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise HTTPError(400, "'stream' must be a boolean", code="invalid_request", param="stream")
        if route == "embeddings":
            stream = False
        namespace, model = gw.dispatcher.resolve(model_ref)
        if accounts is not None and key is not None:
            accounts.check(key, namespace or "", model)
        scope = accounts.scope(key) if accounts is not None and key is not None else None
        tried: set[str] = set()
        while True:
            ex, entry, ns, _backend_model = await gw.dispatcher.dispatch(
                _ROUTES[route],
                raw,
                model_ref,
                request_id=g.request_id,
                allowed_namespaces=scope,
                tried=tried,
                traceparent=request.headers.get("traceparent", ""),
            )
            meta = _Meta(route, model_ref, ns, entry, key, started, g.request_id)
            if stream:
                break
            try:
                response = await _whole(gw, ex, entry, meta, accounts)
            except _Retryable:
                # The node died mid-answer, but a non-streamed client has seen nothing yet.
                if len(tried) >= gw.dispatcher.max_attempts:
                    raise HTTPError(502, "the node failed while answering", code="node_failure") from None
                continue
            response.headers["X-Tooti-Node"] = entry.peer_id
            return response
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Tooti-Node": entry.peer_id}
        return Response(
            _relay_stream(gw, ex, entry, meta, accounts),
            status=200,
            content_type="text/event-stream",
            headers=headers,
        )

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        return await infer("chat")

    @app.post("/v1/completions")
    async def completions() -> Response:
        return await infer("completions")

    @app.post("/v1/embeddings")
    async def embeddings() -> Response:
        return await infer("embeddings")

    admin_http.install(app, gw, accounts, admin or AdminAccess())
    return app


class _Retryable(Exception):
    """The node failed before the client saw a byte: try another node."""


class _Meta:
    __slots__ = ("entry", "key", "model", "namespace", "request_id", "route", "started")

    def __init__(
        self,
        route: str,
        model: str,
        namespace: str,
        entry: NodeEntry,
        key: Any,
        started: float,
        request_id: str,
    ) -> None:
        self.route, self.model, self.namespace, self.entry = route, model, namespace, entry
        self.key, self.started, self.request_id = key, started, request_id


async def _auth(accounts: Accounts | None) -> Any:
    if accounts is None:
        return None
    return await accounts.authenticate(request.headers.get("Authorization"), request.headers.get("x-api-key"))


def _record(
    gw: Gateway,
    accounts: Accounts | None,
    meta: _Meta,
    end: pb.ResponseEnd | None,
    status: int,
    timer: StreamTimer | None = None,
) -> None:
    usage = end.usage if end is not None and end.HasField("usage") else None
    admin_http.request_done(gw, meta, usage, status, timer)
    if accounts is None:
        return
    accounts.record(
        request_id=meta.request_id,
        key=meta.key,
        namespace=meta.namespace,
        node_peer_id=meta.entry.peer_id,
        model=meta.model,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        latency_ms=int((time.perf_counter() - meta.started) * 1000),
        status=status,
    )


async def _whole(
    gw: Gateway, ex: Exchange, entry: NodeEntry, meta: _Meta, accounts: Accounts | None
) -> Response:
    chunks: list[bytes] = []
    ok = False
    try:
        async for block in ex.data():
            chunks.append(block)
        ok = True
    except NodeFailure as exc:
        gw.dispatcher.metrics.node_failure("mid_answer", entry.peer_id)
        log.warning("request %s: node %s failed mid-answer: %s", meta.request_id, entry.peer_id, exc)
        raise _Retryable from None
    except trio.TooSlowError:
        raise HTTPError(504, "the node stopped answering", code="timeout") from None
    finally:
        await gw.dispatcher.finish(ex, entry, ok=ok)
    end = ex.end
    if end is not None and end.HasField("error"):
        _record(gw, accounts, meta, end, end.error.status or 502)
        raise HTTPError(end.error.status or 502, end.error.message, code=end.error.code or None)
    _record(gw, accounts, meta, end, ex.head.status)
    return Response(
        b"".join(chunks), status=ex.head.status, content_type=ex.head.content_type or "application/json"
    )


async def _relay_stream(
    gw: Gateway, ex: Exchange, entry: NodeEntry, meta: _Meta, accounts: Accounts | None
) -> AsyncIterator[bytes]:
    """Pass data frames through as they come; always finish with a valid SSE ending.

    If the node fails after the first byte there is no way to retry invisibly: the client
    gets an error event and ``[DONE]``. If the client goes away, Quart cancels this generator
    and ``finish`` resets the p2p stream, which cancels the backend request on the node.
    """
    ok = False
    status = 200
    timer = gw.dispatcher.metrics.stream_timer(meta.started)
    try:
        try:
            async for block in ex.data():
                timer.tick()
                yield block
            ok = True
        except NodeFailure as exc:
            status = 502
            gw.dispatcher.metrics.node_failure("mid_stream", entry.peer_id)
            log.warning("request %s: node %s failed mid-stream: %s", meta.request_id, entry.peer_id, exc)
            yield sse_error_event(502, "the node serving this request failed mid-stream", "node_failure")
        except trio.TooSlowError:
            status = 504
            yield sse_error_event(504, "the node stopped sending tokens", "timeout")
        else:
            end = ex.end
            if end is not None and end.HasField("error"):
                status = end.error.status or 502
                yield sse_error_event(status, end.error.message, end.error.code or None)
        yield _DONE
    finally:
        with trio.CancelScope(shield=True):
            await gw.dispatcher.finish(ex, entry, ok=ok)
        _record(gw, accounts, meta, ex.end, status if ex.end is not None or status != 200 else 499, timer)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, content_type="application/json")


def _error_response(exc: HTTPError) -> Response:
    if exc.raw_body is not None:
        resp = Response(exc.raw_body, status=exc.status, content_type="application/json")
    else:
        resp = _json(exc.body(), exc.status)
    for k, v in exc.headers.items():
        resp.headers[k] = v
    return resp


__all__ = ["create_app", "error_body"]
