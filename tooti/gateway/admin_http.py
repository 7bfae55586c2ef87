"""The gateway's operator routes: Prometheus ``/metrics``, the ``/ui`` dashboard and its data.

Registered on the OpenAI app by :func:`install` (one call in ``create_app``), so the request
routes stay in ``app.py``. Who may read what:

* Open mode (no accounts): everything is open, like the rest of the gateway.
* Keys mode: ``/v1/admin/summary`` needs an *admin* key, an API key whose prefix is listed in
  the config's ``admin.key_prefixes``; ``/metrics`` needs one too unless ``metrics.auth`` is
  ``open``. The dashboard's static files hold no data and are served to anyone; the page asks
  for the admin key and sends it with each data request.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, Histogram
from quart import Response, g, has_request_context, request
from quart_trio import QuartTrio

from tooti import _trace, logs
from tooti.config import GatewayConfig

from .errors import HTTPError
from .metrics import GatewayMetrics, StreamTimer

if TYPE_CHECKING:
    from tooti.wire import pb

    from .core import Gateway
    from .registry import NodeEntry

log = logging.getLogger("tooti.gateway")
_access = logging.getLogger("tooti.access")

_INFERENCE_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
_UI_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript", "app.css": "text/css"}
_STORE_OPS = ("verify_api_key", "record_usage", "list_namespaces", "namespace_verifier", "usage_summary")


@dataclasses.dataclass(frozen=True)
class AdminAccess:
    """Who is an operator: API keys by prefix; whether ``/metrics`` is open to anyone."""

    key_prefixes: frozenset[str] = frozenset()
    metrics_open: bool = False

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> AdminAccess:
        return cls(frozenset(cfg.admin.key_prefixes), cfg.metrics.auth == "open")


class _Meta(Protocol):
    route: str
    model: str
    namespace: str
    entry: NodeEntry
    key: Any
    started: float
    request_id: str


def metrics_of(gw: Gateway) -> GatewayMetrics:
    return gw.dispatcher.metrics


def request_done(
    gw: Gateway, meta: _Meta, usage: pb.Usage | None, status: int, timer: StreamTimer | None
) -> None:
    """Account for a request a node took part in (called once per such request)."""
    metrics = metrics_of(gw)
    node = meta.entry.peer_id
    if status >= 500:
        metrics.outages.failure(node, f"answered {status} on {meta.route}")
    elif status < 400:
        metrics.outages.success(node)
    if _access.isEnabledFor(logging.INFO):
        latency_ms = int((time.perf_counter() - meta.started) * 1000)
        key = getattr(meta.key, "prefix", "")
        _access.info(
            "%s %s via %s: %d in %d ms",
            meta.route,
            meta.model,
            node,
            status,
            latency_ms,
            extra={
                "request_id": meta.request_id,
                "key": key,
                "node": node,
                "model": meta.model,
                "status": status,
                "latency_ms": latency_ms,
            },
        )
    metrics.request_done(
        route=meta.route,
        model=meta.model,
        namespace=meta.namespace,
        entry=meta.entry,
        key_prefix=getattr(meta.key, "prefix", ""),
        status=status,
        started=meta.started,
        prompt_tokens=usage.prompt_tokens if usage is not None else 0,
        completion_tokens=usage.completion_tokens if usage is not None else 0,
        timer=timer,
    )
    if has_request_context():  # mark it counted for _count_rejected
        g.tooti_counted = True


def install(app: QuartTrio, gw: Gateway, accounts: Any, access: AdminAccess) -> None:
    """Add the operator routes and the rejected-request counter to ``app``."""
    metrics = metrics_of(gw)
    metrics.gateway = gw
    metrics.accounts = accounts
    logs.on_flush(metrics.outages.sweep)
    if accounts is not None and getattr(accounts, "store", None) is not None:
        _time_store(metrics, accounts.store)

    async def require_admin() -> None:
        if accounts is None:
            return
        key = await accounts.authenticate(
            request.headers.get("Authorization"), request.headers.get("x-api-key")
        )
        if key.prefix not in access.key_prefixes:
            raise HTTPError(
                403,
                "this endpoint needs an admin API key (listed in the gateway's admin.key_prefixes)",
                code="permission_denied",
            )

    @app.before_request
    async def _bind_request() -> None:
        # Runs after create_app's own hook has set g.request_id: log lines written while this
        # request is handled carry its id (JSON field request_id, or "[request ...]").
        _trace.bind(getattr(g, "request_id", ""), request.headers.get("traceparent", ""))

    @app.after_request
    async def _count_rejected(response: Response) -> Response:
        # Requests that never reached a node: auth, validation, no node, no capacity. A request
        # a node answered is counted by request_done (streams: when their body ends).
        route = _INFERENCE_ROUTES.get(request.path)
        if route is not None and response.status_code != 200 and not g.get("tooti_counted"):
            metrics.request_rejected(route, response.status_code)
        return response

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        if not access.metrics_open:
            await require_admin()
        return Response(metrics.exposition(), status=200, content_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/admin/summary")
    async def summary() -> Response:
        await require_admin()
        body: dict[str, Any] = {
            "object": "tooti.summary",
            "gateway": gw.peer_id,
            "time": time.time(),
            "totals": metrics.totals(),
            "recent_usage": metrics.usage.snapshot(),
            "daily_usage": None,
        }
        if accounts is not None:
            since = datetime.now(UTC) - timedelta(days=14)
            try:
                body["daily_usage"] = await accounts.usage(None, since)
            except HTTPError as exc:  # database down: the live figures still help
                body["daily_usage_error"] = exc.message
        return Response(_dumps(body), status=200, content_type="application/json")

    @app.get("/ui")
    async def ui_root() -> Response:
        return _ui_file("index.html")

    @app.get("/ui/<name>")
    async def ui_file(name: str) -> Response:
        return _ui_file(name)


def _ui_file(name: str) -> Response:
    content_type = _UI_FILES.get(name)
    if content_type is None:
        raise HTTPError(404, f"no route GET /ui/{name}", code="not_found")
    data = importlib.resources.files("tooti.gateway.ui").joinpath(name).read_bytes()
    headers = {
        # Everything the page runs is in these three files: no inline script, no other origin.
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return Response(data, status=200, content_type=content_type, headers=headers)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


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
