"""The gateway's operator routes: Prometheus ``/metrics``, the ``/ui`` dashboard and its data.

:class:`OperatorRoutes` is plain ASGI in front of the edge app (one wrap in ``create_app``):
it answers ``GET /metrics``, ``/ui``, ``/ui/<file>`` and ``/v1/admin/summary`` and passes
everything else through untouched. Who may read what:

* Open mode (no accounts): everything is open, like the rest of the gateway.
* Keys mode: ``/v1/admin/summary`` needs an *admin* key, an API key whose prefix is listed in
  the config's ``admin.key_prefixes``; ``/metrics`` needs one too unless ``metrics.auth`` is
  ``open``. The dashboard's static files hold no data and are served to anyone; the page asks
  for the admin key and sends it with each data request.

:func:`request_done` is the request path's one call into the metrics, at the end of each
inference request.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, Histogram

from tooti import logs
from tooti.config import GatewayConfig

from .errors import HTTPError
from .http import body as body_io
from .http import responses as out
from .metrics import GatewayMetrics

if TYPE_CHECKING:
    from .core import Gateway

log = logging.getLogger("tooti.gateway")
_access = logging.getLogger("tooti.access")

_UI_FILES = {"index.html": b"text/html; charset=utf-8", "app.js": b"text/javascript", "app.css": b"text/css"}
_STORE_OPS = ("verify_api_key", "record_usage", "list_namespaces", "namespace_verifier", "usage_summary")
_PATHS = frozenset({"/metrics", "/ui", "/v1/admin/summary"})
_HEADERS = [
    # Everything the page runs is in its three files: no inline script, no other origin.
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
]


@dataclasses.dataclass(frozen=True)
class AdminAccess:
    """Who is an operator: API keys by prefix; whether ``/metrics`` is open to anyone."""

    key_prefixes: frozenset[str] = frozenset()
    metrics_open: bool = False

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> AdminAccess:
        return cls(frozenset(cfg.admin.key_prefixes), cfg.metrics.auth == "open")


def metrics_of(gw: Gateway) -> GatewayMetrics:
    return gw.dispatcher.metrics


def request_done(
    gw: Gateway,
    *,
    route: str,
    request_id: str,
    model: str,
    key: Any,
    node: str,
    namespace: str,
    status: int,
    started: float,
    usage: Any,
    timer: Any,
) -> None:
    """Account for one inference request, once, when it ends (``node`` "": no node took it)."""
    metrics = metrics_of(gw)
    if not node:
        metrics.request_rejected(route, status)
        return
    if status >= 500:
        metrics.outages.failure(node, f"answered {status} on {route}")
    elif status < 400:
        metrics.outages.success(node)
    key_prefix = getattr(key, "prefix", "")
    if _access.isEnabledFor(logging.INFO):
        latency_ms = int((time.perf_counter() - started) * 1000)
        _access.info(
            "%s %s via %s: %d in %d ms",
            route,
            model,
            node,
            status,
            latency_ms,
            extra={
                "request_id": request_id,
                "key": key_prefix,
                "node": node,
                "model": model,
                "status": status,
                "latency_ms": latency_ms,
            },
        )
    metrics.request_done(
        route=route,
        model=model,
        namespace=namespace,
        entry=gw.registry.get(node),
        key_prefix=key_prefix,
        status=status,
        started=started,
        prompt_tokens=usage.prompt_tokens if usage is not None else 0,
        completion_tokens=usage.completion_tokens if usage is not None else 0,
        timer=timer,
    )


class OperatorRoutes:
    """ASGI: the operator routes, in front of ``inner`` (the edge app)."""

    def __init__(self, inner: Any, gw: Gateway, accounts: Any, access: AdminAccess) -> None:
        self._inner = inner
        self._gw = gw
        self._accounts = accounts
        self._access = access
        metrics = self._metrics = metrics_of(gw)
        metrics.gateway = gw
        metrics.accounts = accounts
        logs.on_flush(metrics.outages.sweep)
        if accounts is not None and getattr(accounts, "store", None) is not None:
            _time_store(metrics, accounts.store)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path in _PATHS or path.startswith("/ui/")):
            await self._inner(scope, receive, send)
            return
        send = out.shielded(send)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        try:
            try:
                await body_io.read(
                    receive, 64 * 1024, seconds=5.0
                )  # GETs carry none; keep-alive needs it read
            except body_io.BodyTooLarge:
                raise HTTPError(413, "this route takes no request body", code="request_too_large") from None
            if scope["method"] not in ("GET", "HEAD"):
                raise HTTPError(
                    405,
                    f"method {scope['method']} not allowed on {path}",
                    code="method_not_allowed",
                    headers={"Allow": "GET, HEAD"},
                )
            if path == "/metrics":
                if not self._access.metrics_open:
                    await self._require_admin(headers)
                data = self._metrics.exposition()
                await out.whole(send, 200, CONTENT_TYPE_LATEST.encode(), data, [])
            elif path == "/v1/admin/summary":
                await self._require_admin(headers)
                data = json.dumps(await self._summary(), default=str).encode()
                await out.whole(send, 200, out.JSON, data, [])
            else:
                name = "index.html" if path == "/ui" else path[len("/ui/") :]
                content_type = _UI_FILES.get(name)
                if content_type is None:
                    raise HTTPError(404, f"no route GET {path}", code="not_found")
                data = importlib.resources.files("tooti.gateway.ui").joinpath(name).read_bytes()
                await out.whole(send, 200, content_type, data, _HEADERS)
        except body_io.ClientGone:
            return
        except HTTPError as exc:
            await out.error(send, exc, [])

    async def _require_admin(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self._accounts is None:
            return
        authorization = _header(headers, b"authorization")
        key = await self._accounts.authenticate(authorization, _header(headers, b"x-api-key"))
        if key.prefix not in self._access.key_prefixes:
            raise HTTPError(
                403,
                "this endpoint needs an admin API key (listed in the gateway's admin.key_prefixes)",
                code="permission_denied",
            )

    async def _summary(self) -> dict[str, Any]:
        metrics = self._metrics
        body: dict[str, Any] = {
            "object": "tooti.summary",
            "gateway": self._gw.peer_id,
            "time": time.time(),
            "totals": metrics.totals(),
            "queued": self._gw.dispatcher.admission.depth,
            "recent_usage": metrics.usage.snapshot(),
            "daily_usage": None,
        }
        if self._accounts is not None:
            since = datetime.now(UTC) - timedelta(days=14)
            try:
                body["daily_usage"] = await self._accounts.usage(None, since)
            except HTTPError as exc:  # database down: the live figures still help
                body["daily_usage_error"] = exc.message
        return body


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _time_store(metrics: GatewayMetrics, store: Any) -> None:
    """Measure the store's calls by wrapping its coroutine methods on this instance.

    The key cache and the ledger call the store through attribute lookups, so they go
    through the wrappers; the store's own code is untouched.
    """
    histogram = Histogram(
        "tooti_gateway_store_latency_seconds",
        "Duration of calls to the accounts database, by operation (including failed ones).",
        ["op"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        registry=metrics.prometheus,
    )
    metrics.store_latency = histogram
    for op in _STORE_OPS:
        method = getattr(store, op, None)
        if method is not None:
            setattr(store, op, _timed(method, histogram.labels(op)))


def _timed(method: Any, child: Any) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            child.observe(time.perf_counter() - started)

    return wrapper
