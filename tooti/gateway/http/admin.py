"""The gateway's read-only JSON routes, on Quart: health, models, nodes, usage.

These are not on the hot path; Quart's routing and request objects are a convenience here.
The ASGI layer in front (``asgi``) has already matched the route, stamped the request id and
CORS headers, and shields every ``send`` (see ``responses``).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import HTTPError
from .tenancy import visible

if TYPE_CHECKING:
    from ..app import Accounts
    from ..core import Gateway

log = logging.getLogger("tooti.gateway")


def create_admin(gw: Gateway, accounts: Accounts | None) -> QuartTrio:
    app = QuartTrio("tooti.gateway")
    # Framework defaults set on purpose: these routes answer small documents at once, and the
    # ASGI layer has already refused bodies and routes they do not take.
    app.config["RESPONSE_TIMEOUT"] = None  # tooti's own deadlines apply, not Quart's 60 s
    app.config["BODY_TIMEOUT"] = 60
    app.config["MAX_CONTENT_LENGTH"] = 0
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False  # OPTIONS is answered by the ASGI layer

    @app.errorhandler(HTTPError)
    async def _our_error(exc: HTTPError) -> Response:
        resp = _json(exc.body(), exc.status)
        for k, v in exc.headers.items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(HTTPException)
    async def _werkzeug_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return _json(HTTPError(status, exc.description or "", code=None).body(), status)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _json(HTTPError(500, "internal error", code="internal_error").body(), 500)

    async def _scope() -> tuple[Any, set[str] | None]:
        if accounts is None:
            return None, None
        key = await accounts.authenticate(
            request.headers.get("Authorization"), request.headers.get("x-api-key")
        )
        return key, accounts.scope(key)

    @app.get("/healthz")
    async def healthz() -> Response:
        body: dict[str, Any] = {
            "status": "ok",
            "peer_id": gw.peer_id,
            "nodes": len(gw.registry.live()),
            "models": len(gw.registry.model_ids()),
            "queued": gw.dispatcher.admission.depth,
        }
        if accounts is not None:
            db = accounts.health()
            body["database"] = db
            if not db.get("ok", True):
                body["status"] = "degraded"
        return _json(body)

    def _models(scope: set[str] | None) -> list[dict[str, Any]]:
        """Model objects for ``scope``, each with the routes some node serving it relays
        (``routes``: chat, completions, embeddings, responses, passthrough)."""
        now = int(time.time())
        out: dict[str, dict[str, Any]] = {}
        for e in visible(gw.registry.live(), scope):
            if not e.healthy:
                continue
            for m in e.models:
                ids = [f"{e.namespace}:{m}"] if e.namespace else []
                if not e.namespace or scope is None:
                    ids.append(m)
                for mid in ids:
                    owner = e.namespace if mid != m else (e.namespace or "tooti")
                    doc = out.setdefault(
                        mid,
                        {"id": mid, "object": "model", "created": now, "owned_by": owner, "routes": set()},
                    )
                    doc["routes"] |= e.routes
        return [{**doc, "routes": sorted(doc["routes"])} for _, doc in sorted(out.items())]

    @app.get("/v1/models")
    async def list_models() -> Response:
        _, scope = await _scope()
        return _json({"object": "list", "data": _models(scope)})

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        _, scope = await _scope()
        for doc in _models(scope):
            if doc["id"] == model_id:
                return _json(doc)
        raise HTTPError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")

    @app.get("/v1/network/nodes")
    async def network_nodes() -> Response:
        _, scope = await _scope()
        now = time.monotonic()
        nodes = [
            {
                "peer_id": e.peer_id,
                "name": e.name,
                "namespace": e.namespace,
                "models": sorted(e.models),
                "capacity": e.capacity,
                "in_flight": e.load(),
                "reported_in_flight": e.in_flight,
                "healthy": e.healthy,
                "ttft_ms": round(e.ttft_ms, 1),
                "tokens_per_s": round(e.tps, 1),
                "rtt_ms": None if e.rtt_ms is None else round(e.rtt_ms, 2),
                "last_heartbeat_s": round(now - e.last_seen, 2),
                "live": now - e.last_seen <= gw.registry.ttl,
                "failures": e.failures,
                "version": e.version,
                "routes": sorted(e.routes),  # as the node declares them
                # paths its backend refused with 501 anyway (learned from its answers)
                "unsupported_routes": sorted(e.unsupported),
            }
            for e in visible(list(gw.registry.all()), scope)
        ]
        admission = gw.dispatcher.admission
        queue = {"depth": admission.depth, "timed_out": admission.timed_out, "abandoned": admission.abandoned}
        if scope is None:
            queue["by_model"] = admission.depth_by_group()  # type: ignore[assignment]  # mixed-value document
        return _json(
            {
                "object": "list",
                "gateway": gw.peer_id,
                "data": nodes,
                "queue": queue,
                "heartbeats": gw.heartbeats,
            }
        )

    @app.get("/v1/usage")
    async def usage() -> Response:
        key, _ = await _scope()
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

    return app


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, content_type="application/json")
