"""End to end through real processes: OpenAI SDK -> gateway -> libp2p -> node -> llama.cpp.

One gateway and two nodes, each relaying to the real llama.cpp server (SmolLM2-135M). The
nodes have no listen address: they only dialed out to the gateway, which reaches them over
those connections. Raw responses are validated against OpenAI's own OpenAPI document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models
from tests.openapi import validate


@pytest.fixture(scope="module")
def net(llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("e2e")
    gw = _procs.start_gateway(tmp, auth="open")
    backend = {"type": "openai", "base_url": llama}
    nodes = [_procs.start_node(tmp, f"node{i}", gateways=[gw], backend=backend) for i in range(2)]
    wait_for_models(gw.base_url, {"smollm2"})
    yield {"gw": gw, "nodes": nodes, "tmp": tmp}
    for n in nodes:
        n.proc.stop()
    gw.proc.stop()


@pytest.fixture
def client(net: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=net["gw"].base_url, api_key="unused-in-open-mode", max_retries=0)


def test_nodes_listen_nowhere_and_both_serve(net: dict) -> None:
    for node in net["nodes"]:
        cfg = node.config.read_text()
        assert "listen" not in cfg  # dial-out only
    r = httpx.get(net["gw"].http + "/v1/network/nodes", trust_env=False)
    peers = {n["peer_id"] for n in r.json()["data"] if n["live"] and "smollm2" in n["models"]}
    assert peers == {n.peer_id for n in net["nodes"]}


def test_models_list(client: openai.OpenAI, net: dict) -> None:
    models = client.models.list()
    assert "smollm2" in [m.id for m in models.data]
    raw = httpx.get(net["gw"].base_url + "/models", trust_env=False)
    validate("ListModelsResponse", raw.json())
    assert raw.headers["x-request-id"]


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        seed=1,
    )
    assert raw.headers["x-request-id"]
    doc = json.loads(raw.http_response.content)
    validate("CreateChatCompletionResponse", doc)
    completion = raw.parse()
    assert completion.choices[0].message.role == "assistant"
    _check_budget(completion.usage.completion_tokens, completion.choices[0].finish_reason, 8)
    assert completion.usage.prompt_tokens > 0
    # temperature 0 is deterministic on llama.cpp: same request, same answer
    again = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        seed=1,
    )
    assert again.choices[0].message.content == completion.choices[0].message.content


def test_chat_streaming_with_usage(client: openai.OpenAI, net: dict) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    _check_budget(usage.completion_tokens, finish[0], 12)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    # llama.cpp streams at most one token per chunk (a token that ends inside a UTF-8
    # character gives an empty delta): usage counts what the backend generated
    assert 1 <= len(content_chunks) <= usage.completion_tokens
    # The raw SSE stream, chunk by chunk, against OpenAI's schema; it ends with [DONE].
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _sse(net["gw"].base_url + "/chat/completions", body)
    assert events[-1] == "[DONE]"
    docs = [json.loads(e) for e in events[:-1]]
    for d in docs:
        validate("CreateChatCompletionStreamResponse", d)
    assert docs[-1]["choices"] == [] and 1 <= docs[-1]["usage"]["completion_tokens"] <= 5


def test_streaming_without_include_usage_has_no_usage_chunk(net: dict) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    events = _sse(net["gw"].base_url + "/chat/completions", body)
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["choices"] for e in events[:-1])  # no usage-only chunk leaked


def test_completions(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model="smollm2", prompt="Once upon a time", max_tokens=6
    )
    validate("CreateCompletionResponse", json.loads(raw.http_response.content))
    parsed = raw.parse()
    _check_budget(parsed.usage.completion_tokens, parsed.choices[0].finish_reason, 6)


def test_embeddings(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="smollm2", input=["hello world", "tooti"], encoding_format="float"
    )
    validate("CreateEmbeddingResponse", json.loads(raw.http_response.content))
    emb = raw.parse()
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 576


def test_unknown_model_is_404(client: openai.OpenAI, net: dict) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    r = httpx.post(
        net["gw"].base_url + "/chat/completions", json={"model": "nope", "messages": []}, trust_env=False
    )
    validate("ErrorResponse", r.json())
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"messages": []}', 400, "invalid_request"),
        (b'{"model": "smollm2", "stream": "yes"}', 400, "invalid_request"),
    ],
)
def test_bad_requests(net: dict, data: bytes, status: int, code: str) -> None:
    r = httpx.post(net["gw"].base_url + "/chat/completions", content=data, trust_env=False)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert r.headers["x-request-id"]
    validate("ErrorResponse", r.json())


def test_body_over_limit_is_413(net: dict) -> None:
    big = b'{"model": "smollm2", "messages": [], "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = httpx.post(net["gw"].base_url + "/chat/completions", content=big, trust_env=False)
    assert r.status_code == 413
    assert r.headers["x-request-id"]
    validate("ErrorResponse", r.json())


def test_unknown_route_and_method_are_openai_errors(net: dict) -> None:
    r = httpx.get(net["gw"].base_url + "/nothing-here", trust_env=False)
    assert r.status_code == 404 and r.headers["x-request-id"]
    validate("ErrorResponse", r.json())
    r = httpx.get(net["gw"].base_url + "/chat/completions", trust_env=False)
    assert r.status_code == 405 and r.headers["x-request-id"]
    validate("ErrorResponse", r.json())


def test_client_request_id_is_echoed(net: dict) -> None:
    r = httpx.get(net["gw"].base_url + "/models", headers={"X-Request-ID": "my-trace-42"}, trust_env=False)
    assert r.headers["x-request-id"] == "my-trace-42"


def test_healthz(net: dict) -> None:
    r = httpx.get(net["gw"].http + "/healthz", trust_env=False)
    assert r.status_code == 200 and r.json()["nodes"] == 2


def _check_budget(tokens: int, finish_reason: str, max_tokens: int) -> None:
    """max_tokens reached the backend: it stopped at the budget, or earlier by itself."""
    assert 1 <= tokens <= max_tokens
    assert (finish_reason == "length") == (tokens == max_tokens)


def _sse(url: str, body: dict) -> list[str]:
    events = []
    with httpx.stream("POST", url, json=body, timeout=60, trust_env=False) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return events


def test_gateway_log_has_no_tracebacks(net: dict) -> None:
    log = Path(net["gw"].proc.log).read_text()
    assert "Traceback" not in log, log[-3000:]
