"""The gateway's HTTP edge through real processes: time limits, connections after early
answers, hang-ups, temporary absence, CORS.

The backend is the fault-injecting stand-in (one SSE event per token when paced), so long
and broken streams are produced on demand.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from harness import procs as _procs
from tests._wait import until
from tests.conftest import wait_for_models
from tests.openapi import validate

_CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("edge")
    up, up_url = _procs.start_backend("tests.standins.openai_upstream", tmp / "up.log", "--model", "fake")
    gw = _procs.start_gateway(
        tmp, "gw", auth="open", extra={"gateway": {"cors_origins": ["http://localhost:3000"]}}
    )
    short = _procs.start_gateway(
        tmp, "short", auth="open", extra={"timeouts": {"total_sec": 3, "first_token_sec": 3}}
    )
    keys = _procs.start_gateway(tmp, "keys", auth="keys")
    backend = {"type": "openai", "base_url": up_url}
    nodes = [_procs.start_node(tmp, f"n{i}", gateways=[gw, short], backend=backend) for i in range(2)]
    wait_for_models(gw.base_url, {"fake"})
    wait_for_models(short.base_url, {"fake"})
    yield {"gw": gw, "short": short, "keys": keys, "up": up_url, "nodes": nodes, "tmp": tmp}
    for p in [*(n.proc for n in nodes), gw.proc, short.proc, keys.proc, up]:
        p.stop()


def _events(base_url: str, body: dict, timeout: float = 120) -> list[str]:
    events = []
    with httpx.stream(
        "POST", base_url + "/chat/completions", json=body, timeout=timeout, trust_env=False
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return events


def test_a_75_second_stream_arrives_whole(edge: dict) -> None:
    """No framework timeout cuts a long stream (quart-trio's RESPONSE_TIMEOUT was 60 s)."""
    body = {**_CHAT, "stream": True, "x_fake": {"tokens": 75, "delay_ms": 1000}}
    started = time.monotonic()
    events = _events(edge["gw"].base_url, body)
    assert time.monotonic() - started > 70
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "".join(f"tok{i} " for i in range(75))


def test_a_stream_past_total_sec_ends_with_an_error_event_and_done(edge: dict) -> None:
    body = {**_CHAT, "stream": True, "x_fake": {"tokens": 30, "delay_ms": 500}}
    events = _events(edge["short"].base_url, body)
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])
    validate("ErrorResponse", err)
    assert err["error"]["code"] in ("timeout", "deadline_exceeded")
    assert 1 < len(events) - 2 < 30  # some tokens came, not all


def test_no_first_byte_before_total_sec_is_a_504(edge: dict) -> None:
    r = httpx.post(
        edge["short"].base_url + "/chat/completions",
        json={**_CHAT, "x_fake": {"ttft_ms": 6000}},
        timeout=30,
        trust_env=False,
    )
    assert r.status_code == 504
    validate("ErrorResponse", r.json())


def _raw_exchange(port: int, head: bytes, body: bytes) -> tuple[bytes, str]:
    """Send headers, pause 10 ms, send the body; read the answer; then send a valid request on
    the same socket. Returns (first status line, what happened to the second request)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(5)
        s.sendall(head)
        time.sleep(0.01)
        try:
            s.sendall(body)
        except OSError:
            pass
        first = _read_response(s)
        ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        s.settimeout(1.0)  # an answer or a close within 1 s, else it counts as hung
        try:
            s.sendall(ok)
            second = _read_response(s)
            outcome = "closed" if second == b"" else "answered"
        except (ConnectionError, BrokenPipeError):
            outcome = "closed"
        except TimeoutError:
            outcome = "hung"
        return first, outcome


def _read_response(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            return buf.split(b"\r\n")[0] if buf else b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = s.recv(65536)
        if not data:
            break
        rest += data
    return head.split(b"\r\n")[0]


def _port(gw: _procs.Gateway) -> int:
    return int(gw.http.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("which", "method", "path", "size", "status"),
    [
        ("gw", "POST", "/v1/nothing", 64, b"404"),
        ("gw", "PUT", "/v1/chat/completions", 64, b"405"),
        ("gw", "POST", "/v1/chat/completions", 5 * 1024 * 1024, b"413"),
        ("keys", "POST", "/v1/chat/completions", 64, b"401"),
    ],
)
def test_early_answers_never_hang_the_connection(
    edge: dict, which: str, method: str, path: str, size: int, status: bytes
) -> None:
    gw = edge[which]
    body = b'{"model":"fake","pad":"' + b"x" * size + b'"}'
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    first, outcome = _raw_exchange(_port(gw), head.encode(), body)
    assert status in first, first
    assert outcome in ("answered", "closed")


def _close_wait(pid: int) -> int:
    out = subprocess.run(["ss", "-tanp", "state", "close-wait"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def test_no_close_wait_growth_over_50_early_answers(edge: dict) -> None:
    gw = edge["keys"]
    pid = gw.proc.popen.pid
    before = _close_wait(pid)
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    body = b'{"model":"fake"}'
    for i in range(50):
        path = ("/v1/chat/completions", "/v1/nothing")[i % 2]
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        _, outcome = _raw_exchange(_port(gw), head, body)
        assert outcome in ("answered", "closed")
    time.sleep(0.5)  # let the server finish closing what the clients closed
    assert _close_wait(pid) <= before
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds_before + 5


def test_client_hang_ups_are_not_node_failures(edge: dict) -> None:
    gw = edge["gw"]
    body = {**_CHAT, "stream": True, "x_fake": {"tokens": 200, "delay_ms": 20}}
    for _ in range(10):
        with httpx.stream(
            "POST", gw.base_url + "/chat/completions", json=body, timeout=30, trust_env=False
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # hang up after the first chunk
    time.sleep(0.3)
    nodes = httpx.get(gw.base_url + "/network/nodes", trust_env=False).json()["data"]
    assert [n["failures"] for n in nodes] == [0, 0], nodes
    assert all(n["failures"] == 0 for n in nodes)
    # No node was cooled down: concurrent requests still spread over both.
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with ThreadPoolExecutor(8) as pool:
        served = set(
            pool.map(
                lambda _: client.chat.completions.with_raw_response.create(
                    **_CHAT, extra_body={"x_fake": {"tokens": 10, "delay_ms": 50}}
                ).headers["x-tooti-node"],
                range(8),
            )
        )
    assert len(served) == 2


def test_a_backend_4xx_is_passed_on_and_not_a_node_failure(edge: dict) -> None:
    gw = edge["gw"]
    for _ in range(4):
        r = httpx.post(
            gw.base_url + "/chat/completions", json={**_CHAT, "x_fake": {"status": 400}}, trust_env=False
        )
        assert r.status_code == 400
        validate("ErrorResponse", r.json())
    nodes = httpx.get(gw.base_url + "/network/nodes", trust_env=False).json()["data"]
    assert [n["failures"] for n in nodes] == [0, 0], nodes


def test_a_known_model_without_a_live_node_is_503_not_404(edge: dict) -> None:
    tmp, gw = edge["tmp"], edge["gw"]
    up, up_url = _procs.start_backend("tests.standins.openai_upstream", tmp / "gone.log", "--model", "gone")
    node = _procs.start_node(tmp, "gone", gateways=[gw], backend={"type": "openai", "base_url": up_url})
    try:
        wait_for_models(gw.base_url, {"gone"})
    finally:
        node.proc.stop()
        up.stop()
    wait_for_models(gw.base_url, {"gone"}, absent=True)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gone", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"]
    assert info.value.code == "model_unavailable"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="never-served", messages=[{"role": "user", "content": "x"}])


def test_cors_preflight_and_headers(edge: dict) -> None:
    url = edge["gw"].base_url + "/chat/completions"
    pre = httpx.options(
        url,
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        trust_env=False,
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = httpx.post(url, json=_CHAT, headers={"Origin": "http://localhost:3000"}, trust_env=False)
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = httpx.options(
        url,
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        trust_env=False,
    )
    assert "access-control-allow-origin" not in other.headers
    # default: no CORS at all
    none = httpx.options(
        edge["short"].base_url + "/models",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"},
        trust_env=False,
    )
    assert "access-control-allow-origin" not in none.headers


def test_a_client_that_leaves_the_queue_never_reaches_the_node(edge: dict) -> None:
    tmp, gw = edge["tmp"], edge["gw"]
    up, up_url = _procs.start_backend("tests.standins.openai_upstream", tmp / "slot.log", "--model", "slot")
    node = _procs.start_node(
        tmp,
        "slot",
        gateways=[gw],
        backend={"type": "openai", "base_url": up_url},
        node={"max_concurrency": 1},
    )
    try:
        wait_for_models(gw.base_url, {"slot"})
        long = {"model": "slot", "messages": [{"role": "user", "content": "x"}], "stream": True}
        long["x_fake"] = {"tokens": 100, "delay_ms": 30}
        with httpx.stream(
            "POST", gw.base_url + "/chat/completions", json=long, timeout=30, trust_env=False
        ) as r:
            lines = r.iter_lines()
            next(lines)  # the node's only slot is taken
            payload = json.dumps({**long, "stream": False}).encode()
            with socket.create_connection(("127.0.0.1", _port(gw))) as s:
                s.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                until(lambda: _queue(gw)["depth"] == 1)
            # hung up while queued: it leaves the queue at once, long before the slot frees
            until(lambda: _queue(gw)["depth"] == 0, timeout=1.5)
            for _ in lines:
                pass
        stats = httpx.get(up_url + "/_stats", trust_env=False).json()
        assert stats["requests"] == 1, stats  # only the stream that held the slot
        assert _queue(gw)["abandoned"] >= 1
    finally:
        node.proc.stop()
        up.stop()


def _queue(gw: _procs.Gateway) -> dict:
    return httpx.get(gw.base_url + "/network/nodes", trust_env=False).json()["queue"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model":"fake","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        (
            b'{"model":"fake","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}',
            "messages[0].content[0].text",
        ),
        (b'{"model":"fake","messages":[{"role":"user","content":7}]}', "messages[0].content"),
        (b'{"model":"fa\\u0000ke","messages":[]}', "model"),
    ],
)
def test_malformed_requests_are_400_and_never_reach_a_node(
    edge: dict, body: bytes, param: str | None
) -> None:
    gw = edge["gw"]
    before = httpx.get(edge["up"] + "/_stats", trust_env=False).json()["requests"]
    r = httpx.post(gw.base_url + "/chat/completions", content=body, trust_env=False)
    assert r.status_code == 400, r.text
    validate("ErrorResponse", r.json())
    if param is not None:
        assert r.json()["error"]["param"] == param
    assert httpx.get(edge["up"] + "/_stats", trust_env=False).json()["requests"] == before


def test_a_non_streamed_answer_above_the_limit_is_502(tmp_path) -> None:  # type: ignore[no-untyped-def]
    up, up_url = _procs.start_backend(
        "tests.standins.openai_upstream", tmp_path / "big.log", "--model", "big"
    )
    gw = _procs.start_gateway(
        tmp_path, "gw", auth="open", extra={"gateway": {"max_response_bytes": 64 * 1024}}
    )
    node = _procs.start_node(tmp_path, "n", gateways=[gw], backend={"type": "openai", "base_url": up_url})
    try:
        wait_for_models(gw.base_url, {"big"})
        for _ in range(3):
            r = httpx.post(
                gw.base_url + "/chat/completions",
                json={
                    "model": "big",
                    "messages": [{"role": "user", "content": "x"}],
                    "x_fake": {"tokens": 200_000},
                },
                timeout=60,
                trust_env=False,
            )
            assert r.status_code == 502 and r.json()["error"]["code"] == "response_too_large"
        rss_kb = int(
            next(
                line for line in open(f"/proc/{gw.proc.popen.pid}/status") if line.startswith("VmRSS")
            ).split()[1]
        )
        assert rss_kb < 300 * 1024
        nodes = httpx.get(gw.base_url + "/network/nodes", trust_env=False).json()["data"]
        assert nodes[0]["failures"] == 0  # the gateway's limit, not the node's failure
    finally:
        for p in (node.proc, gw.proc, up):
            p.stop()


def test_fairness_one_keys_batch_does_not_starve_anothers_request(edge: dict) -> None:
    """Key A queues 50 requests for a node with one slot, then key B sends one. B gets the
    next free slot: at most the A request in service when B arrived finishes before B, plus
    one that may finish while B's request is still on its way to the gateway (bound 2)."""
    tmp, gw = edge["tmp"], edge["gw"]
    up, up_url = _procs.start_backend("tests.standins.openai_upstream", tmp / "fair.log", "--model", "fair")
    node = _procs.start_node(
        tmp,
        "fair",
        gateways=[gw],
        backend={"type": "openai", "base_url": up_url},
        node={"max_concurrency": 1},
    )
    done: list[tuple[str, float]] = []
    body = {
        "model": "fair",
        "messages": [{"role": "user", "content": "x"}],
        "x_fake": {"tokens": 4, "ttft_ms": 150},  # ~150 ms of service each
    }

    def ask(key: str) -> None:
        r = httpx.post(
            gw.base_url + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
            trust_env=False,
        )
        assert r.status_code == 200, r.text
        done.append((key, time.monotonic()))

    try:
        wait_for_models(gw.base_url, {"fair"})
        payload = json.dumps(body).encode()
        with ThreadPoolExecutor(50) as pool, socket.create_connection(("127.0.0.1", _port(gw))) as b:
            batch = [pool.submit(ask, "key-A") for _ in range(50)]
            until(lambda: _queue(gw)["depth"] >= 10, timeout=30)  # A has a queue
            # B's connection is open already, so its request reaches the gateway at once.
            sent_b = time.monotonic()
            b.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-B\r\n"
                + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            b.settimeout(60)
            assert b"200" in _read_response(b)
            done.append(("key-B", time.monotonic()))
            for f in batch:
                f.result(timeout=120)
        b_at = next(t for k, t in done if k == "key-B")
        a_between = sum(1 for k, t in done if k == "key-A" and sent_b <= t < b_at)
        assert a_between <= 2, a_between
        assert len(done) == 51
        assert sum(1 for k, t in done if k == "key-A" and t > b_at) >= 5  # B did not just come last
    finally:
        node.proc.stop()
        up.stop()


def test_a_node_busy_with_another_gateways_request_requeues_instead_of_503(edge: dict) -> None:
    """The node's one slot is taken through gateway "gw"; gateway "short" cannot count that,
    sends its request, gets "busy", and waits in its queue until the slot frees: a 200."""
    tmp, gw, other = edge["tmp"], edge["gw"], edge["short"]
    up, up_url = _procs.start_backend(
        "tests.standins.openai_upstream", tmp / "shared.log", "--model", "shared"
    )
    node = _procs.start_node(
        tmp,
        "shared",
        gateways=[gw, other],
        backend={"type": "openai", "base_url": up_url},
        node={"max_concurrency": 1},
    )
    try:
        wait_for_models(gw.base_url, {"shared"})
        wait_for_models(other.base_url, {"shared"})
        long = {"model": "shared", "messages": [{"role": "user", "content": "x"}], "stream": True}
        long["x_fake"] = {"tokens": 40, "delay_ms": 25}
        with httpx.stream(
            "POST", gw.base_url + "/chat/completions", json=long, timeout=30, trust_env=False
        ) as r:
            lines = r.iter_lines()
            next(lines)  # the node's only slot is held by gw's request
            queued = httpx.post(
                other.base_url + "/chat/completions",
                json={"model": "shared", "messages": [{"role": "user", "content": "y"}]},
                timeout=30,
                trust_env=False,
            )
            for _ in lines:
                pass
        assert queued.status_code == 200, queued.text
        nodes = httpx.get(other.base_url + "/network/nodes", trust_env=False).json()["data"]
        assert all(n["failures"] == 0 for n in nodes)
    finally:
        node.proc.stop()
        up.stop()
