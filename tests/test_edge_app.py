"""The HTTP edge in process (httpx's ASGITransport, no sockets): routing, early errors, CORS,
request ids, model lookup errors. Relaying through nodes is tested with real processes."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.openapi import validate
from tooti.config import GatewayConfig, GatewaySection
from tooti.gateway.app import create_app
from tooti.gateway.dispatch import Dispatcher
from tooti.gateway.registry import Registry
from tooti.wire import pb


def _gateway() -> types.SimpleNamespace:
    registry = Registry(ttl=15.0)
    dispatcher = Dispatcher(registry, None, max_attempts=3, first_token_timeout=5, total_timeout=10)  # type: ignore[arg-type]  # no node is ever dialled here
    return types.SimpleNamespace(registry=registry, dispatcher=dispatcher, peer_id="gw", heartbeats={})


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, types.SimpleNamespace]]:
    gw = _gateway()
    cfg = GatewayConfig(gateway=GatewaySection(cors_origins=("http://localhost:*",), max_body_bytes=1024))
    app = create_app(gw, cfg)  # type: ignore[arg-type]  # a stand-in with the attributes the app reads
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c, gw


async def test_unknown_route_and_method(client) -> None:  # type: ignore[no-untyped-def]
    c, _ = client
    r = await c.post("/v1/nothing", json={})
    assert r.status_code == 404 and r.headers["x-request-id"].startswith("req_")
    validate("ErrorResponse", r.json())
    r = await c.get("/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    validate("ErrorResponse", r.json())


async def test_request_ids(client) -> None:  # type: ignore[no-untyped-def]
    c, _ = client
    r = await c.get("/healthz", headers={"X-Request-ID": "trace-1"})
    assert r.headers["x-request-id"] == "trace-1"
    assert r.headers["x-tooti-request-id"].startswith("req_")
    bad = await c.get("/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert bad.headers["x-request-id"] == bad.headers["x-tooti-request-id"]


async def test_body_limit_and_bad_bodies(client) -> None:  # type: ignore[no-untyped-def]
    c, _ = client
    r = await c.post("/v1/chat/completions", content=b"x" * 2048)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = await c.post("/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await c.post("/v1/chat/completions", json={"model": "m", "stream": "yes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


async def test_unknown_model_404_known_model_503(client) -> None:  # type: ignore[no-untyped-def]
    c, gw = client
    r = await c.post("/v1/chat/completions", json={"model": "never", "messages": []})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    ann = pb.Announcement(models=[pb.ModelInfo(name="was-here")], capacity=1, backend_healthy=True, seq=1)
    gw.registry.update("node-1", ann)
    gw.registry.drop("node-1")  # it went away
    r = await c.post("/v1/chat/completions", json={"model": "was-here", "messages": []})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    assert r.headers["retry-after"]
    validate("ErrorResponse", r.json())


async def test_cors(client) -> None:  # type: ignore[no-untyped-def]
    c, _ = client
    pre = await c.options(
        "/v1/models", headers={"Origin": "http://localhost:8000", "Access-Control-Request-Method": "GET"}
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://localhost:8000"
    r = await c.get("/v1/models", headers={"Origin": "http://localhost:8000"})
    assert r.headers["access-control-allow-origin"] == "http://localhost:8000"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = await c.get("/v1/models", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
