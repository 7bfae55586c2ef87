"""The fake OpenAI upstream (tests/standins/openai_upstream.py): shapes, faults, HTTP behaviour.

Most tests run the server in-process on a free port (one per test); one starts the CLI as a
subprocess. Response shapes are checked against OpenAI's OpenAPI document via tests.openapi.
The stand-in's own throughput is measured by ``bench.relay_capacity`` (direct runs), not here.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.openapi import validate
from tests.standins.openai_upstream import FakeUpstream, serve

REPO = Path(__file__).resolve().parents[1]
TOKENS = 8
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there, fake model"}]
PROMPT_WORDS = 6  # words across MESSAGES
CHAT = "/v1/chat/completions"
CLI = [sys.executable, "-m", "tests.standins.openai_upstream"]


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    """An in-process server answering TOKENS tokens, models "fake" and "other"."""
    return await nursery.start(functools.partial(serve, 0, tokens=TOKENS, model=["fake", "other"]))


@pytest.fixture
async def client(upstream: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client pointed at the in-process server."""
    async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as c:
        yield c


def usage(prompt: int, completion: int) -> dict[str, int]:
    """The expected usage object."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat(**extra: Any) -> dict[str, Any]:
    """A chat request body with ``extra`` fields."""
    return {"model": "fake", "messages": MESSAGES, **extra}


async def sse(response: httpx.Response, events: list[Any]) -> None:
    """Append each ``data:`` payload of ``response`` to ``events`` (JSON-decoded, "[DONE]" as is);
    appending as they arrive keeps what came before a failure."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        else:
            assert line == "", line


async def stream_events(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Any]:
    """All events of a stream that must finish cleanly with 200."""
    events: list[Any] = []
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        await sse(response, events)
    return events


async def wait_stats(client: httpx.AsyncClient, **expected: int) -> dict[str, Any]:
    """Poll /_stats (bounded, ~5 s) until every ``expected`` counter has its value."""
    stats: dict[str, Any] = {}
    for _ in range(500):
        stats = (await client.get("/_stats")).json()
        if all(stats[k] == v for k, v in expected.items()):
            return stats
        await trio.sleep(0.01)
    raise AssertionError(f"stats never reached {expected}: {stats}")


async def raw_exchange(upstream: FakeUpstream, data: bytes, *, until: bytes, limit: int = 1 << 20) -> bytes:
    """Send ``data`` on a fresh TCP connection; read until ``until`` has been seen or EOF."""
    stream = await trio.open_tcp_stream(upstream.host, upstream.port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(5):
            while until not in received and len(received) < limit:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
    return received


# ------------------------------------------------------------------------------------------ shapes


async def test_models_and_health(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()
    validate("ListModelsResponse", models)
    assert [m["id"] for m in models["data"]] == ["fake", "other"]
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/nope")).status_code == 404
    assert (await client.get("/v1/chat/completions")).status_code == 405


async def test_chat_non_stream_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer k"})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    validate("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion" and body["model"] == "fake"
    choice = body["choices"][0]
    text = "".join(f"tok{i} " for i in range(TOKENS))
    assert choice["message"] == {"role": "assistant", "content": text, "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == usage(PROMPT_WORDS, TOKENS)

    last = (await client.get("/_last_request")).json()
    assert last["path"] == "/v1/chat/completions" and last["method"] == "POST"
    assert last["body"] == chat()
    assert json.loads(last["raw"]) == chat()
    assert last["headers"]["authorization"] == "Bearer k"


async def test_max_tokens_caps_with_length(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/chat/completions", json=chat(max_completion_tokens=3))).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    body = (await client.post("/v1/chat/completions", json=chat(max_tokens=TOKENS))).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == TOKENS


async def test_content_parts_count_as_words(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]}
    ]
    body = (await client.post("/v1/chat/completions", json={"model": "m", "messages": messages})).json()
    assert body["usage"]["prompt_tokens"] == 3
    assert body["model"] == "m"


async def test_completion_non_stream_shape(client: httpx.AsyncClient) -> None:
    body = (
        await client.post("/v1/completions", json={"model": "fake", "prompt": "a b c", "max_tokens": 2})
    ).json()
    validate("CreateCompletionResponse", body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "tok0 tok1 "
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_embeddings_shape(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/embeddings", json={"model": "fake", "input": ["one two", "three"]})).json()
    validate("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 8 for d in body["data"])
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    again = (await client.post("/v1/embeddings", json={"model": "fake", "input": "one two"})).json()
    assert again["data"][0]["embedding"] == body["data"][0]["embedding"]
    b64_request = {"model": "fake", "input": "x", "encoding_format": "base64"}
    b64 = (await client.post("/v1/embeddings", json=b64_request)).json()
    assert isinstance(b64["data"][0]["embedding"], str)


# ----------------------------------------------------------------------------------------- streams


async def test_chat_stream_chunks(client: httpx.AsyncClient) -> None:
    events = await stream_events(client, "/v1/chat/completions", chat(stream=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        assert "usage" not in chunk
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert content == [f"tok{i} " for i in range(TOKENS)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_chat_stream_include_usage(client: httpx.AsyncClient) -> None:
    body = chat(stream=True, stream_options={"include_usage": True}, max_tokens=5)
    events = await stream_events(client, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    *chunks, last = events[:-1]
    for chunk in [*chunks, last]:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert all("usage" in c and c["usage"] is None for c in chunks)
    assert len(chunks) == 1 + 5 + 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert last["choices"] == []
    assert last["usage"] == usage(PROMPT_WORDS, 5)


async def test_completion_stream(client: httpx.AsyncClient) -> None:
    # The spec's CreateCompletionResponse admits neither the null finish_reason that OpenAI sends on
    # every streamed chunk but the last, nor the "usage": null of include_usage streams; validate
    # the finish chunk of a stream without include_usage.
    events = await stream_events(
        client, "/v1/completions", {"model": "fake", "prompt": "x y", "stream": True}
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == [f"tok{i} " for i in range(TOKENS)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    validate("CreateCompletionResponse", chunks[-1])

    body = {"model": "fake", "prompt": "x y", "stream": True, "stream_options": {"include_usage": True}}
    events = await stream_events(client, "/v1/completions", body)
    *chunks, last = events[:-1]
    assert len(chunks) == TOKENS + 1 and all(c["usage"] is None for c in chunks)
    assert last["choices"] == [] and last["usage"] == usage(2, TOKENS)


async def test_delays_pace_the_stream(client: httpx.AsyncClient) -> None:
    start = trio.current_time()
    paced = chat(stream=True, x_fake={"tokens": 5, "delay_ms": 20, "ttft_ms": 50})
    events = await stream_events(client, "/v1/chat/completions", paced)
    elapsed = trio.current_time() - start
    assert len(events) == 1 + 5 + 1 + 1
    assert 0.05 + 4 * 0.02 <= elapsed < 2.0
    start = trio.current_time()
    body = (await client.post("/v1/chat/completions", json=chat(x_fake={"tokens": 3, "ttft_ms": 60}))).json()
    assert trio.current_time() - start >= 0.06
    assert body["usage"]["completion_tokens"] == 3


async def test_large_stream_one_event_per_token(client: httpx.AsyncClient) -> None:
    events = await stream_events(
        client, "/v1/completions", {"prompt": "p", "stream": True, "x_fake": {"tokens": 1000}}
    )
    assert len(events) == 1000 + 1 + 1
    assert events[999]["choices"][0]["text"] == "tok999 "
    assert (await client.get("/_stats")).json()["tokens_sent"] == 1000


def _chunks(raw: bytes) -> list[bytes]:
    """The payloads of a chunked HTTP body (``raw`` starts after the head)."""
    out = []
    while True:
        size_line, _, rest = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out.append(rest[:size])
        raw = rest[size + 2 :]


@pytest.mark.parametrize(("batch", "sizes"), [(None, [1] * 10), (4, [4, 4, 2])])
async def test_one_http_chunk_per_token_unless_batched(
    upstream: FakeUpstream, batch: int | None, sizes: list[int]
) -> None:
    # Like llama.cpp, vLLM and SGLang: with no delay at all, still one chunk per token.
    fake: dict[str, Any] = {"tokens": 10} if batch is None else {"tokens": 10, "batch": batch}
    body = json.dumps({"prompt": "p", "stream": True, "x_fake": fake}).encode()
    request = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    received = await raw_exchange(upstream, request, until=b"\r\n0\r\n\r\n")
    chunks = _chunks(received.partition(b"\r\n\r\n")[2])
    assert [c.count(b'"text":"tok') for c in chunks[:-1]] == sizes
    assert chunks[-1].endswith(b"data: [DONE]\n\n")


# ------------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
async def test_x_fake_status(client: httpx.AsyncClient, status: int) -> None:
    requests = [
        ("/v1/chat/completions", chat(stream=True)),
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/embeddings", {"input": "x"}),
    ]
    for path, body in requests:
        response = await client.post(path, json={**body, "x_fake": {"status": status}})
        assert response.status_code == status
        error = response.json()
        validate("ErrorResponse", error)
        assert error["error"]["param"] is None and error["error"]["code"] == f"fake_{status}"
    assert (await client.get("/_stats")).json()["errors"] == 3


async def test_invalid_requests_get_400(client: httpx.AsyncClient) -> None:
    bodies = [
        {"x_fake": {"tokens": "many"}, "messages": []},
        {"x_fake": {"fail": "sometimes"}, "messages": []},
        {},
    ]
    for body in bodies:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        validate("ErrorResponse", response.json())
    response = await client.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400


async def test_fail_before_head(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=chat(x_fake={"fail": "before_head"}))
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", CHAT, json=chat(stream=True, x_fake={"fail": "before_head"})):
            pass
    stats = (await client.get("/_stats")).json()
    assert stats["failed"] == 2 and stats["completed"] == 0 and stats["active"] == 0


async def test_fail_after_tokens_truncates_stream(client: httpx.AsyncClient) -> None:
    events: list[Any] = []
    with pytest.raises(httpx.RemoteProtocolError):
        body = chat(stream=True, x_fake={"fail": "after_tokens", "fail_after": 3})
        async with client.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            await sse(response, events)
    assert "[DONE]" not in events
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["", "tok0 ", "tok1 ", "tok2 "]
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    # non-streaming: a truncated body
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=chat(x_fake={"fail": "after_tokens"}))
    stats = (await client.get("/_stats")).json()
    assert stats["failed"] == 2 and stats["cancelled"] == 0


async def test_client_close_mid_stream_is_cancelled(client: httpx.AsyncClient) -> None:
    seen = 0
    body = chat(stream=True, x_fake={"tokens": 10_000, "delay_ms": 5})
    async with client.stream("POST", CHAT, json=body) as response:
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= 4:
                break
    stats = await wait_stats(client, cancelled=1, active=0)
    assert stats["completed"] == 0 and stats["tokens_sent"] < 10_000


async def test_client_close_during_ttft_is_cancelled(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", CHAT, json=chat(stream=True, x_fake={"ttft_ms": 30_000})) as response:
        assert response.status_code == 200
    await wait_stats(client, cancelled=1, active=0)
    with trio.move_on_after(0.1):
        await client.post("/v1/completions", json={"prompt": "x", "x_fake": {"ttft_ms": 30_000}})
    await wait_stats(client, cancelled=2, active=0)


async def test_client_close_with_zero_delay_is_cancelled(client: httpx.AsyncClient) -> None:
    body = {"prompt": "x", "stream": True, "x_fake": {"tokens": 5_000_000}}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for _ in response.aiter_raw():
            break
    stats = await wait_stats(client, cancelled=1, active=0)
    assert stats["tokens_sent"] < 5_000_000


async def test_reset(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat())
    assert (await client.get("/_stats")).json()["requests"] == 1
    stats = (await client.post("/_reset")).json()
    assert stats["requests"] == stats["completed"] == stats["tokens_sent"] == 0
    assert (await client.get("/_last_request")).status_code == 404


# -------------------------------------------------------------------------------------------- HTTP


async def test_keep_alive_reuses_one_connection(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
        assert len(await stream_events(client, "/v1/chat/completions", chat(stream=True))) == TOKENS + 3
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200
        assert (
            await client.post("/v1/chat/completions", json=chat(x_fake={"status": 429}))
        ).status_code == 429
    stats = (await client.get("/_stats")).json()
    assert stats["requests"] == 12 and stats["completed"] == 9 and stats["errors"] == 3
    assert stats["connections"] == 1


async def test_pipelined_requests(upstream: FakeUpstream) -> None:
    body = json.dumps({"prompt": "a b", "stream": True, "x_fake": {"tokens": 2}}).encode()
    post = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    get = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    received = await raw_exchange(upstream, post + post + get, until=b'{"status":"ok"}')
    assert received.count(b"data: [DONE]") == 2
    assert received.count(b"\r\n0\r\n\r\n") == 2
    assert received.endswith(b'{"status":"ok"}')


async def test_chunked_request_body_rejected(upstream: FakeUpstream) -> None:
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    received = await raw_exchange(upstream, request, until=b"}}")
    assert received.startswith(b"HTTP/1.1 411 ")
    assert b"connection: close" in received.lower()


async def test_http10_stream_is_close_delimited(upstream: FakeUpstream) -> None:
    body = b'{"prompt": "a", "stream": true}'
    request = b"POST /v1/completions HTTP/1.0\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    received = await raw_exchange(upstream, request, until=b"never")
    head, _, rest = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and b"transfer-encoding" not in head.lower()
    assert rest.count(b"data: ") == TOKENS + 2 and rest.endswith(b"data: [DONE]\n\n")


async def test_a_thousand_open_streams(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    count = 1000
    body = json.dumps(chat(stream=True, x_fake={"tokens": 1_000_000, "delay_ms": 200})).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    streams: list[trio.SocketStream] = []

    async def open_one() -> None:
        stream = await trio.open_tcp_stream(upstream.host, upstream.port)
        streams.append(stream)
        await stream.send_all(request)
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 OK")

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(open_one)
            assert (await client.get("/_stats")).json()["active"] == count
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    await wait_stats(client, cancelled=count, active=0)


async def test_cli_subprocess() -> None:
    command = [*CLI, "--port", "0", "--tokens", "3", "--model", "x", "--model", "y"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            line = await trio.to_thread.run_sync(process.stdout.readline)
        assert line.startswith("ready http://127.0.0.1:"), line
        url = line.split()[1]
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["x", "y"]
            body = (await c.post("/v1/chat/completions", json=chat())).json()
            assert body["usage"]["completion_tokens"] == 3
    finally:
        process.terminate()
        process.wait(timeout=10)
