"""One request followed gateway -> node -> backend: the request id and the client's W3C
traceparent travel on the wire, reach the backend as headers (OpenAI-compatible and Ollama
adapters), and tag the node's log lines for that request.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models
from tooti._trace import valid_traceparent

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_validation() -> None:
    assert valid_traceparent(TRACEPARENT) == TRACEPARENT
    for bad in (
        "",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        TRACEPARENT + "\r\nX-Evil: 1",
        "x" * 10_000,
    ):
        assert valid_traceparent(bad) == ""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("tracing")
    up, up_url = _procs.start_backend("tests.standins.openai_upstream", tmp / "up.log", "--model", "m")
    port = _procs.free_port()
    ollama = _procs.Proc(
        [sys.executable, "-m", "tests.standins.ollama", "--port", str(port)], log=tmp / "ollama.log"
    )
    ollama_url = ollama.wait_line("listening on").split()[-1]
    json_logs = {"TOOTI_LOG_FORMAT": "json"}
    gw = _procs.start_gateway(tmp, auth="open", env={**json_logs, "TOOTI_ACCESS_LOG": "1"})
    nodes = [
        _procs.start_node(
            tmp, "o", gateways=[gw], backend={"type": "openai", "base_url": up_url}, env=json_logs
        ),
        _procs.start_node(tmp, "l", gateways=[gw], backend={"type": "ollama", "base_url": ollama_url}),
    ]
    ollama_model = httpx.get(ollama_url + "/api/tags", trust_env=False).json()["models"][0]["name"]
    wait_for_models(gw.base_url, {"m", ollama_model})
    yield {"gw": gw, "up": up_url, "ollama": ollama_url, "ollama_model": ollama_model, "nodes": nodes}
    for p in [*(n.proc for n in nodes), gw.proc, up, ollama]:
        p.stop()


def _chat(gw: _procs.Gateway, model: str, headers: dict[str, str], **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(
        gw.base_url + "/chat/completions", json=body, headers=headers, trust_env=False, timeout=30
    )


def test_request_id_and_traceparent_reach_the_openai_backend(net: dict) -> None:
    # The id that travels is the gateway's own (X-Tooti-Request-ID, the ledger's key); the
    # client's X-Request-ID is echoed back and recorded beside it.
    r = _chat(net["gw"], "m", {"X-Request-ID": "trace-openai-1", "traceparent": TRACEPARENT})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-openai-1"
    seen = httpx.get(net["up"] + "/_last_request", trust_env=False).json()["headers"]
    assert seen["x-request-id"] == r.headers["x-tooti-request-id"]
    assert seen["traceparent"] == TRACEPARENT
    # A malformed traceparent is not passed on; the request id still is.
    r = _chat(net["gw"], "m", {"traceparent": "00-nonsense"})
    assert r.status_code == 200
    seen = httpx.get(net["up"] + "/_last_request", trust_env=False).json()["headers"]
    assert "traceparent" not in seen
    assert seen["x-request-id"] == r.headers["x-tooti-request-id"]


def test_request_id_and_traceparent_reach_ollama(net: dict) -> None:
    r = _chat(net["gw"], net["ollama_model"], {"traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    seen = httpx.get(net["ollama"] + "/_last_headers", trust_env=False).json()
    assert seen["x-request-id"] == r.headers["x-tooti-request-id"]
    assert seen["traceparent"] == TRACEPARENT


def test_node_log_lines_carry_the_request_id(net: dict) -> None:
    # The backend drops the connection: the node logs a warning while serving this request.
    r = _chat(net["gw"], "m", {}, x_fake={"fail": "before_head"})
    assert r.status_code >= 500
    rid = r.headers["x-tooti-request-id"]
    log = net["nodes"][0].proc.log
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        tagged = [rec for rec in records if rec.get("request_id") == rid]
        if tagged or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert tagged, records[-5:]
    assert tagged[0]["logger"] == "tooti.node" and tagged[0]["level"] == "WARNING"


def test_gateway_log_lines_carry_the_request_id(net: dict) -> None:
    # The gateway writes its access line while handling the request, tagged with its id.
    r = _chat(net["gw"], "m", {})
    assert r.status_code == 200
    rid = r.headers["x-tooti-request-id"]
    log = net["gw"].proc.log
    deadline = time.monotonic() + 10
    while not (found := [x for x in log.read_text().splitlines(keepends=True) if rid in x]) or not found[
        0
    ].endswith("\n"):  # a line still being written is not read half
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    # (The previous test's failure may also end an outage here, in a line tagged the same.)
    (line,) = [r for r in map(json.loads, found) if r["logger"] == "tooti.access"]
    assert line["request_id"] == rid
    assert line["status"] == 200 and line["model"] == "m" and isinstance(line["latency_ms"], int)
