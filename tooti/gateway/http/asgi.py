"""The gateway's ASGI entry point: request ids, CORS, routing, early errors.

Every request gets the gateway's own id (``req_…``, the ledger's key, also sent back as
``X-Tooti-Request-ID``); a client's valid ``X-Request-ID`` is echoed in ``X-Request-ID`` and
recorded beside it, nothing more. Inference routes go to :mod:`infer`; the read-only JSON
routes to the Quart app from :mod:`admin`; anything else is answered here.

Early answers (404, 405, 413, preflight) and every other response leave the connection usable
or closed, never hung: a body that fits the limit is read to its end first (so the keep-alive
connection carries the next request), a larger one gets ``Connection: close``, and every
``send`` is shielded (see :mod:`responses` for the quart-trio/Hypercorn interaction this avoids).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

from tooti.openai_shapes import PASSTHROUGH_PATHS, ROUTE_BY_PATH
from tooti.wire import pb

from ..errors import HTTPError
from . import body as body_io
from . import responses as out
from .admin import create_admin
from .infer import Inference, Limits

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ..app import Accounts
    from ..core import Gateway

log = logging.getLogger("tooti.gateway")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ADMIN_EXACT = frozenset({"/healthz", "/v1/models", "/v1/network/nodes", "/v1/usage"})
_CORS_METHODS = b"GET, POST, OPTIONS"
_CORS_EXPOSE = b"X-Request-ID, X-Tooti-Request-ID, X-Tooti-Node, Retry-After"
_CORS_MAX_AGE = b"600"


class RequestContext:
    """What the handlers need of one request, read once from the ASGI scope."""

    __slots__ = (
        "client_host",
        "client_request_id",
        "direct",
        "headers",
        "method",
        "path",
        "priority",
        "request_id",
        "response_headers",
    )

    def __init__(self, scope: dict[str, Any], cors: list[tuple[bytes, bytes]]) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        # tooti's own server lets a started stream be written to without a send() per chunk.
        self.direct: Any = (scope.get("extensions") or {}).get("tooti.direct")
        client = scope.get("client")
        self.client_host = str(client[0]) if client else ""
        self.request_id = f"req_{uuid.uuid4().hex}"
        rid = self.header(b"x-request-id")
        self.client_request_id = rid if rid and _REQUEST_ID_OK.match(rid) else None
        self.priority = _priority(self.header(b"x-tooti-priority"))
        self.response_headers = [
            (b"x-request-id", (self.client_request_id or self.request_id).encode()),
            (b"x-tooti-request-id", self.request_id.encode()),
            *cors,
        ]

    def caller(self, key: Any) -> str:
        """Who the request is queued for, for fairness: the API key, else the presented
        credential (open mode), else the client's address."""
        prefix = getattr(key, "prefix", None)
        if isinstance(prefix, str) and prefix:
            return "key:" + prefix
        cred = self.header(b"authorization") or self.header(b"x-api-key")
        if cred:
            return "cred:" + hashlib.sha256(cred.encode()).hexdigest()[:16]
        return "addr:" + self.client_host

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


class EdgeApp:
    """ASGI application: ``EdgeApp(gw, accounts=..., limits=..., cors_origins=...)``."""

    def __init__(
        self,
        gw: Gateway,
        *,
        accounts: Accounts | None,
        limits: Limits,
        cors_origins: tuple[str, ...] = (),
    ) -> None:
        self._admin: QuartTrio = create_admin(gw, accounts)
        self._infer = Inference(gw, accounts, limits)
        self._limits = limits
        self._cors = frozenset(cors_origins)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._admin(scope, receive, send)  # type: ignore[arg-type]  # lifespan: Quart's own startup/shutdown
            return
        send = out.shielded(send)
        ctx = RequestContext(scope, self._cors_headers(scope["headers"]))
        path, method = ctx.path, ctx.method
        route = ROUTE_BY_PATH.get(path)
        if route is None and path in PASSTHROUGH_PATHS:
            route = ("passthrough", pb.ROUTE_PASSTHROUGH)
        try:
            if method == "OPTIONS" and (route is not None or _is_admin(path)):
                await self._drain_then(receive, send, ctx, None)
                return
            if route is not None:
                if method != "POST":
                    await self._drain_then(receive, send, ctx, _not_allowed(method, path))
                    return
                await self._infer.handle(ctx, route, receive, send)
                return
            if _is_admin(path):
                if method not in ("GET", "HEAD"):
                    await self._drain_then(receive, send, ctx, _not_allowed(method, path))
                    return
                await self._admin(scope, receive, _stamping(send, ctx.response_headers))  # type: ignore[arg-type]  # an http scope, typed as a plain dict here
                return
            await self._drain_then(
                receive, send, ctx, HTTPError(404, f"no route {method} {path}", code="not_found")
            )
        except Exception:
            log.exception("unhandled error in %s %s", method, path)
            await out.error(
                send,
                HTTPError(500, "internal error", code="internal_error"),
                ctx.response_headers,
                close=True,
            )

    def _cors_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if not self._cors:
            return []
        origin = next((v.decode("latin-1") for k, v in headers if k == b"origin"), None)
        if origin is None or not _origin_allowed(origin, self._cors):
            return []
        # Echo the origin (not "*") so that credentialed browser requests work too.
        allow = origin.encode("latin-1")
        requested = next((v for k, v in headers if k == b"access-control-request-headers"), None)
        return [
            (b"access-control-allow-origin", allow),
            (b"vary", b"Origin"),
            (b"access-control-allow-methods", _CORS_METHODS),
            (b"access-control-allow-headers", requested or b"Authorization, Content-Type, X-Request-ID"),
            (b"access-control-expose-headers", _CORS_EXPOSE),
            (b"access-control-max-age", _CORS_MAX_AGE),
        ]

    async def _drain_then(
        self, receive: Any, send: Any, ctx: RequestContext, error: HTTPError | None
    ) -> None:
        """Answer without using the body: read it first when it fits the limit, so the
        connection stays usable; else answer and close. ``error`` None: a preflight (204)."""
        limit = self._limits.max_body_bytes
        declared = body_io.declared_length(ctx.headers)
        close = declared is not None and declared > limit
        if not close:
            try:
                await body_io.read(receive, limit, seconds=5.0)
            except body_io.ClientGone:
                return
            except (body_io.BodyTooLarge, HTTPError):
                close = True
        if error is None:
            headers = [(b"content-length", b"0"), *ctx.response_headers]
            if close:
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await out.body(send, b"", more=False)
            return
        await out.error(send, error, ctx.response_headers, close=close)


#: what ``tooti up`` allows: browser apps served from this machine, on any port
LOCALHOST_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")


def _origin_allowed(origin: str, allowed: frozenset[str]) -> bool:
    """Whether ``origin`` is listed: exactly, by ``"*"``, or by an entry ending in ``:*``
    (any port of that scheme and host)."""
    if origin in allowed or "*" in allowed:
        return True
    scheme_host, sep, port = origin.rpartition(":")
    return bool(sep) and port.isdigit() and f"{scheme_host}:*" in allowed


def _is_admin(path: str) -> bool:
    return path in _ADMIN_EXACT or path.startswith("/v1/models/")


def _not_allowed(method: str, path: str) -> HTTPError:
    allow = "GET, HEAD" if _is_admin(path) else "POST"
    return HTTPError(
        405, f"method {method} not allowed on {path}", code="method_not_allowed", headers={"Allow": allow}
    )


def _stamping(send: Any, headers: list[tuple[bytes, bytes]]) -> Any:
    """``send`` that adds the request id and CORS headers to the response head."""

    async def stamp(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return stamp


def _priority(value: str | None) -> int:
    """``X-Tooti-Priority``: an integer, higher first among one caller's queued requests."""
    try:
        return max(-100, min(100, int(value))) if value else 0
    except ValueError:
        return 0
