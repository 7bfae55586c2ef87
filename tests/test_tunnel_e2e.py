"""The inference tunnel end to end: gateway and nodes as processes, the stand-in upstream counting
what it sends and which of its requests were cancelled (observed at the backend, not inferred).

Not timed: every wait is bounded generously and polls a condition another process reports.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from harness import procs as _procs
from tests._wait import until_async
from tests.conftest import wait_for_models


# Both HTTP servers the gateway can run: tooti's own (the default, whose tunnel reader writes
# tokens straight to client sockets) and Hypercorn (the fallback, every token through send()).
@pytest.fixture(scope="module", params=["tooti", "hypercorn"])
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tunnel")
    up, up_url = _procs.start_backend(
        "tests.standins.openai_upstream", tmp / "up.log", "--model", "fake", "--model", "other"
    )
    gw = _procs.start_gateway(tmp, auth="open", extra={"gateway": {"http_server": request.param}})
    backend = {"type": "openai", "base_url": up_url}
    # Node a serves "fake", node b serves "other": a request's model says which tunnel carries it.
    nodes = [
        _procs.start_node(
            tmp,
            name,
            gateways=[gw],
            backend=backend,
            node={"max_concurrency": 64},
            extra={"models": {"allow": [model]}},
        )
        for name, model in (("a", "fake"), ("b", "other"))
    ]
    wait_for_models(gw.base_url, {"fake", "other"})
    yield {"gw": gw, "up": up_url, "nodes": nodes}
    for p in [*(n.proc for n in nodes), gw.proc, up]:
        p.stop()


def _body(tokens: int, delay_ms: float, model: str = "fake") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "x_fake": {"tokens": tokens, "delay_ms": delay_ms},
    }


async def _stats(client: httpx.AsyncClient, up: str) -> dict[str, Any]:
    return (await client.get(up + "/_stats")).json()


async def _stream(
    client: httpx.AsyncClient, gw: str, tokens: int, delay_ms: float, model: str = "fake"
) -> tuple[str, list[str]]:
    """(the node that served it, the SSE data payloads) of one whole stream."""
    events: list[str] = []
    body = _body(tokens, delay_ms, model)
    async with client.stream("POST", gw + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        node = r.headers["x-tooti-node"]
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return node, events


def _content_tokens(events: list[str]) -> int:
    return sum('"content":"tok' in e for e in events)


async def test_a_client_that_reads_nothing_holds_up_only_its_own_request(lab: dict[str, Any]) -> None:
    gw, up = lab["gw"], lab["up"]
    host, port = gw.http.removeprefix("http://").split(":")
    # A client that sends a request for a practically endless stream and never reads a byte.
    raw = json.dumps(_body(5_000_000, 0)).encode()
    stalled = await trio.open_tcp_stream(host, int(port))
    await stalled.send_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(raw), raw)
    )
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        before = await _stats(client, up)
        results: list[tuple[str, list[str]]] = []

        async def one() -> None:
            results.append(await _stream(client, gw.http, 40, 5))

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(one)
        assert len(results) == 16
        for _node, events in results:
            assert _content_tokens(events) == 40 and events[-1] == "[DONE]"

        # Backpressure reached the backend: once the buffers on the way are full, the stalled
        # request's backend stops sending (it is still open, not cancelled).
        async def paused() -> bool:
            a = (await _stats(client, up))["tokens_sent"]
            await trio.sleep(1.0)
            b = await _stats(client, up)
            return a == b["tokens_sent"] and b["active"] == 1

        await until_async(paused, timeout=60)
        assert (await _stats(client, up))["tokens_sent"] - before["tokens_sent"] < 5_000_000
        await stalled.aclose()
        await until_async(lambda: _cancelled_since(client, up, before, 1))


async def _cancelled_since(client: httpx.AsyncClient, up: str, before: dict[str, Any], n: int) -> bool:
    s = await _stats(client, up)
    return s["cancelled"] - before["cancelled"] >= n and s["active"] == 0


async def test_a_reset_cancels_exactly_its_backend_request(lab: dict[str, Any]) -> None:
    gw, up = lab["gw"], lab["up"]
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        before = await _stats(client, up)
        survivor: list[tuple[str, list[str]]] = []

        async def leaver() -> None:
            async with client.stream("POST", gw.http + "/v1/chat/completions", json=_body(400, 20)) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += '"content":"tok' in line
                    if seen >= 3:
                        break  # the client goes away mid-stream

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leaver)
                nursery.start_soon(lambda: _append(survivor, _stream(client, gw.http, 60, 20)))
        _node, events = survivor[0]
        assert _content_tokens(events) == 60 and events[-1] == "[DONE]"
        await until_async(lambda: _cancelled_since(client, up, before, 1))
        after = await _stats(client, up)
        assert after["cancelled"] - before["cancelled"] == 1
        assert after["completed"] - before["completed"] == 1


async def _append(out: list[Any], aw: Any) -> None:
    out.append(await aw)


async def test_a_dead_tunnel_fails_only_its_own_requests(lab: dict[str, Any]) -> None:
    gw, up = lab["gw"], lab["up"]
    victim, survivor = lab["nodes"]
    outcomes: list[tuple[str, list[str]]] = []
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        before = await _stats(client, up)

        async def one(model: str) -> None:
            outcomes.append(await _stream(client, gw.http, 100, 30, model))

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(one, ("fake", "other")[i % 2])
                # Once all twelve stream, node a dies, and its tunnel with it.
                await until_async(lambda: _active(client, up, 12))
                os.kill(victim.proc.popen.pid, signal.SIGKILL)
        by_node: dict[str, list[list[str]]] = {}
        for node, events in outcomes:
            by_node.setdefault(node, []).append(events)
        assert sorted(len(v) for v in by_node.values()) == [6, 6]
        for events in by_node[victim.peer_id]:
            assert events[-1] == "[DONE]" and '"node_failure"' in events[-2]
            assert _content_tokens(events) < 100
        for events in by_node[survivor.peer_id]:
            assert _content_tokens(events) == 100 and events[-1] == "[DONE]"
        # The dead node's backend requests were cancelled (its connections to the upstream closed).
        await until_async(lambda: _cancelled_since(client, up, before, 6))


async def _active(client: httpx.AsyncClient, up: str, n: int) -> bool:
    return (await _stats(client, up))["active"] >= n
