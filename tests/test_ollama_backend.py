"""The Ollama adapter against the Ollama stand-in (in-process, one per test, on a free port)."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from harness.procs import free_port
from tests._wait import until_async
from tests.openapi import validate
from tests.standins.ollama import OllamaStandin, serve
from tooti.node.backends.base import BackendError, Reply, Request, Usage
from tooti.node.backends.ollama import OllamaBackend

MODEL = "llama3.2"
EMBED_MODEL = "nomic-embed-text"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


@dataclasses.dataclass
class Standin:
    app: OllamaStandin
    url: str


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


@pytest.fixture
async def standin(nursery: trio.Nursery) -> Standin:
    app = OllamaStandin()
    url = await nursery.start(functools.partial(serve, app))
    return Standin(app, url)


@pytest.fixture
def backend(standin: Standin, client: httpx.AsyncClient) -> OllamaBackend:
    return OllamaBackend(standin.url, client)


def chat(content: str = "hello there world", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


async def collect(backend: OllamaBackend, request: Request) -> tuple[Reply, list[bytes]]:
    async with backend.open(request) as reply:
        blocks = [block async for block in reply.blocks]
    return reply, blocks


def sse_events(blocks: list[bytes]) -> list[dict[str, Any]]:
    """Parse blocks, checking each holds only complete ``data:`` events and none is [DONE]."""
    events = []
    for block in blocks:
        assert block.endswith(b"\n\n"), block
        for raw in block.split(b"\n\n")[:-1]:
            assert raw.startswith(b"data: "), raw
            assert raw != b"data: [DONE]"
            events.append(json.loads(raw[len(b"data: ") :]))
    return events


def usage_of(done: dict[str, Any]) -> Usage:
    prompt, completion = done["prompt_eval_count"], done["eval_count"]
    return Usage(prompt, completion, prompt + completion)


# -- models and health ---------------------------------------------------------------------------


async def test_list_models_and_healthy(backend: OllamaBackend) -> None:
    assert backend.kind == "ollama"
    assert await backend.list_models() == ["llama3.2:latest", "nomic-embed-text:latest"]
    assert await backend.healthy() is True


async def test_dead_backend(client: httpx.AsyncClient) -> None:
    backend = OllamaBackend(f"http://127.0.0.1:{free_port()}", client)
    assert await backend.healthy() is False
    with pytest.raises(BackendError):
        await backend.list_models()
    with pytest.raises(BackendError):
        async with backend.open(Request("chat", chat(stream=True))):
            pass  # pragma: no cover


async def test_healthy_is_bounded_when_backend_hangs(
    client: httpx.AsyncClient, nursery: trio.Nursery
) -> None:
    # A listener that accepts and never answers.
    listeners = await nursery.start(functools.partial(trio.serve_tcp, _never_answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    backend = OllamaBackend(f"http://127.0.0.1:{port}", client)
    with trio.fail_after(3):
        assert await backend.healthy() is False


async def _never_answer(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_timeout_raises_backend_error(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, _never_answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient(timeout=0.2) as client:
        with pytest.raises(BackendError) as caught:
            async with OllamaBackend(f"http://127.0.0.1:{port}", client).open(
                Request("chat", chat(stream=True))
            ):
                pass  # pragma: no cover
    assert (caught.value.status, caught.value.code) == (504, "backend_timeout")


async def test_api_key_is_sent(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    url = await nursery.start(functools.partial(serve, OllamaStandin(api_key="s3cret")))
    assert await OllamaBackend(url, client, api_key="s3cret").list_models()
    with pytest.raises(BackendError):
        await OllamaBackend(url, client).list_models()
    reply, blocks = await collect(OllamaBackend(url, client, api_key="wrong"), Request("chat", chat()))
    assert reply.status == 401


# -- chat, streaming -----------------------------------------------------------------------------


async def test_streaming_text(backend: OllamaBackend, standin: Standin) -> None:
    reply, blocks = await collect(backend, Request("chat", chat(stream=True)))
    assert (reply.status, reply.content_type) == (200, "text/event-stream")
    events = sse_events(blocks)
    for event in events:
        validate("CreateChatCompletionStreamResponse", event)
        assert event["object"] == "chat.completion.chunk"
        assert event["model"] == MODEL
        assert event["id"] == events[0]["id"] and event["id"].startswith("chatcmpl-")
        assert event["created"] == events[0]["created"]
        assert "usage" not in event  # the client did not ask for it
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "hello there world"
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "stop"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert reply.usage == usage_of(standin.app.last_done)
    assert reply.usage == Usage(3, 3, 6)


async def test_streaming_usage_chunk_when_client_asked(backend: OllamaBackend, standin: Standin) -> None:
    reply, blocks = await collect(backend, Request("chat", chat(stream=True), client_usage=True))
    events = sse_events(blocks)
    for event in events:
        validate("CreateChatCompletionStreamResponse", event)
    last = events[-1]
    assert last["choices"] == []
    expected = usage_of(standin.app.last_done)
    assert reply.usage == expected
    assert last["usage"] == dataclasses.asdict(expected)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_streaming_tool_call(backend: OllamaBackend, standin: Standin) -> None:
    body = chat("What is the weather in Paris?", stream=True, tools=[WEATHER_TOOL])
    reply, blocks = await collect(backend, Request("chat", body))
    events = sse_events(blocks)
    for event in events:
        validate("CreateChatCompletionStreamResponse", event)
    calls = [c for e in events for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    call = calls[0]
    assert (call["index"], call["id"], call["type"]) == (0, "call_0", "function")
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris", "unit": "celsius"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert reply.usage == usage_of(standin.app.last_done)


async def test_max_tokens_gives_length(backend: OllamaBackend) -> None:
    reply, blocks = await collect(backend, Request("chat", chat("a b c d e", stream=True, max_tokens=2)))
    events = sse_events(blocks)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "a b"
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 2


# -- chat, not streaming -------------------------------------------------------------------------


async def test_non_streaming_text(backend: OllamaBackend, standin: Standin) -> None:
    reply, blocks = await collect(backend, Request("chat", chat(stream=False)))
    assert (reply.status, reply.content_type) == (200, "application/json")
    document = json.loads(b"".join(blocks))
    validate("CreateChatCompletionResponse", document)
    assert document["object"] == "chat.completion" and document["id"].startswith("chatcmpl-")
    assert document["model"] == MODEL
    choice = document["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hello there world", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert reply.usage == usage_of(standin.app.last_done)
    assert document["usage"] == dataclasses.asdict(reply.usage)


async def test_non_streaming_tool_call(backend: OllamaBackend) -> None:
    reply, blocks = await collect(backend, Request("chat", chat("weather in Oslo", tools=[WEATHER_TOOL])))
    document = json.loads(b"".join(blocks))
    validate("CreateChatCompletionResponse", document)
    choice = document["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "call_0" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Oslo", "unit": "celsius"}


# -- the request reaches Ollama whole ------------------------------------------------------------


async def test_every_mapped_chat_field_reaches_ollama(backend: OllamaBackend, standin: Standin) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": "you are a test"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"location": "Paris", "days": [1, 2]}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [WEATHER_TOOL],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "stop": "END",
        "max_completion_tokens": 5,
        "max_tokens": 99,
        "presence_penalty": 0.25,
        "frequency_penalty": 0.5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        "user": "ignored",
        "logit_bias": {"1": 2},
    }
    reply, _ = await collect(backend, Request("chat", body))
    assert reply.status == 200
    assert standin.app.last_request == {
        "model": MODEL,
        "stream": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "system", "content": "you are a test"},
            {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"location": "Paris", "days": [1, 2]}}}
                ],
            },
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [WEATHER_TOOL],
        "format": schema,
        "options": {
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 7,
            "stop": ["END"],
            "num_predict": 5,
            "presence_penalty": 0.25,
            "frequency_penalty": 0.5,
        },
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, {"format": "json"}),
        ({"response_format": {"type": "text"}}, {}),
        ({"stop": ["a", "b"], "max_tokens": 3}, {"options": {"stop": ["a", "b"], "num_predict": 3}}),
        ({"tools": [WEATHER_TOOL], "tool_choice": "none"}, {}),
        ({"tools": [WEATHER_TOOL], "tool_choice": "auto"}, {"tools": [WEATHER_TOOL]}),
    ],
)
async def test_chat_field_variants(
    backend: OllamaBackend, standin: Standin, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    reply, _ = await collect(backend, Request("chat", chat(**fields)))
    assert reply.status == 200
    sent = standin.app.last_request
    extra = {k: v for k, v in sent.items() if k not in ("model", "messages", "stream")}
    assert extra == expected


async def test_untranslatable_request_is_a_400_without_backend_call(
    backend: OllamaBackend, standin: Standin
) -> None:
    body = chat()
    body["messages"].append(
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "x", "type": "function", "function": {"name": "f", "arguments": "not json"}}
            ],
        }
    )
    reply, blocks = await collect(backend, Request("chat", body))
    assert reply.status == 400
    document = json.loads(b"".join(blocks))
    validate("ErrorResponse", document)
    assert document["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    assert standin.app.last_request is None


async def test_nan_is_a_400_without_backend_call(backend: OllamaBackend, standin: Standin) -> None:
    reply, blocks = await collect(backend, Request("chat", chat(temperature=float("nan"))))
    assert reply.status == 400
    validate("ErrorResponse", json.loads(b"".join(blocks)))
    assert standin.app.last_request is None


# -- completions and embeddings ------------------------------------------------------------------


async def test_completions(backend: OllamaBackend, standin: Standin) -> None:
    body = {"model": MODEL, "prompt": "once upon a time", "max_tokens": 3, "suffix": "end"}
    reply, blocks = await collect(backend, Request("completions", body))
    document = json.loads(b"".join(blocks))
    validate("CreateCompletionResponse", document)
    assert document["choices"][0]["text"] == "once upon a"
    assert document["choices"][0]["finish_reason"] == "length"
    assert standin.app.last_request == {
        "model": MODEL,
        "stream": False,
        "prompt": "once upon a time",
        "suffix": "end",
        "options": {"num_predict": 3},
    }
    assert reply.usage == usage_of(standin.app.last_done)

    reply, blocks = await collect(
        backend, Request("completions", {**body, "stream": True}, client_usage=True)
    )
    events = sse_events(blocks)
    assert all(e["object"] == "text_completion" and e["id"] == events[0]["id"] for e in events)
    # The spec's completion object has no null finish_reason, which every chunk but the last carries.
    validate("CreateCompletionResponse", events[-2])
    assert "".join(c["text"] for e in events for c in e["choices"]) == "once upon a"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"] == dataclasses.asdict(reply.usage)
    assert reply.usage == usage_of(standin.app.last_done)


async def test_embeddings(backend: OllamaBackend, standin: Standin) -> None:
    body = {"model": EMBED_MODEL, "input": ["one two", "three"], "dimensions": 4}
    reply, blocks = await collect(backend, Request("embeddings", body))
    document = json.loads(b"".join(blocks))
    validate("CreateEmbeddingResponse", document)
    assert document["object"] == "list" and document["model"] == EMBED_MODEL
    assert [d["index"] for d in document["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 4 for d in document["data"])
    assert document["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert reply.usage == Usage(3, 0, 3)
    assert standin.app.last_request == {"model": EMBED_MODEL, "input": ["one two", "three"], "dimensions": 4}

    reply, blocks = await collect(backend, Request("embeddings", {**body, "encoding_format": "base64"}))
    encoded = json.loads(b"".join(blocks))["data"][0]["embedding"]
    floats = struct.unpack("<4f", base64.b64decode(encoded))
    assert floats == pytest.approx(document["data"][0]["embedding"], abs=1e-6)


# -- errors --------------------------------------------------------------------------------------


async def test_http_error_becomes_error_reply(backend: OllamaBackend) -> None:
    reply, blocks = await collect(backend, Request("chat", {**chat(stream=True), "model": "nope"}))
    assert (reply.status, reply.content_type) == (404, "application/json")
    document = json.loads(b"".join(blocks))
    validate("ErrorResponse", document)
    assert document["error"]["code"] == "model_not_found"
    assert "nope" in document["error"]["message"]
    assert document["error"]["param"] == "model"


def test_ollama_errors_are_mapped_honestly() -> None:
    """Not every 404 is an unknown model, and no JSON object is stringified into a message."""
    from tooti.node.backends._ollama_reply import _error_document, _ollama_error

    route = json.loads(_error_document(404, _ollama_error(b"404 page not found") or ""))["error"]
    assert route["code"] == "not_found" and route["param"] is None
    nested = _ollama_error(b'{"error": {"message": "out of memory", "kind": "oom"}}')
    assert nested == "out of memory"
    assert _ollama_error(b'{"error": {"weird": 1}}') is None  # the caller says "ollama answered N"


@pytest.mark.parametrize("fault", ["drop", "malformed", "error"])
async def test_mid_stream_failure_raises(
    backend: OllamaBackend, client: httpx.AsyncClient, fault: str
) -> None:
    client.headers.update({"X-Standin-Fault": fault, "X-Standin-Fault-After": "2", "X-Standin-Delay-Ms": "5"})
    received: list[bytes] = []
    with pytest.raises(BackendError):
        async with backend.open(Request("chat", chat("a b c d e f", stream=True))) as reply:
            async for block in reply.blocks:
                received.append(block)
    # Everything before the fault was delivered, nothing after it.
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(received))
    assert text == "a b"


@pytest.mark.parametrize("fault", ["drop", "malformed", "error"])
async def test_failure_before_first_token_raises_from_open(
    backend: OllamaBackend, client: httpx.AsyncClient, fault: str
) -> None:
    client.headers.update({"X-Standin-Fault": fault, "X-Standin-Fault-After": "0"})
    with pytest.raises(BackendError):
        async with backend.open(Request("chat", chat(stream=True))):
            pass  # pragma: no cover


async def test_leaving_early_cancels_the_generation(
    backend: OllamaBackend, client: httpx.AsyncClient, standin: Standin
) -> None:
    client.headers["X-Standin-Delay-Ms"] = "20"
    async with backend.open(Request("chat", chat(stream=True, max_tokens=1000))) as reply:
        async for _ in reply.blocks:
            break

    async def cancelled() -> bool:
        stats = (await client.get(f"{standin.url}/_stats")).json()
        return stats == {"cancelled": 1, "completed": 0}

    await until_async(cancelled)


async def test_completed_stream_is_not_a_cancellation(backend: OllamaBackend, standin: Standin) -> None:
    for _ in range(2):
        await collect(backend, Request("chat", chat(stream=True)))
    assert standin.app.stats == {"cancelled": 0, "completed": 2}


async def test_cancelling_the_caller_closes_the_backend_request(
    backend: OllamaBackend, client: httpx.AsyncClient, standin: Standin
) -> None:
    client.headers["X-Standin-Delay-Ms"] = "20"
    with trio.move_on_after(0.2):
        await collect(backend, Request("chat", chat(stream=True, max_tokens=1000)))

    async def cancelled() -> bool:
        return standin.app.stats["cancelled"] == 1

    await until_async(cancelled)


# -- coalescing ----------------------------------------------------------------------------------


async def test_lines_of_one_read_become_one_block() -> None:
    """Lines that arrive together leave together; a line split across reads waits for its end."""
    line = lambda **fields: json.dumps({"model": MODEL, "done": False, **fields}).encode() + b"\n"  # noqa: E731
    reads = [
        line(message={"role": "assistant", "content": "a"})
        + line(message={"role": "assistant", "content": " b"})
        + line(message={"role": "assistant", "content": " c"})[:10],
        line(message={"role": "assistant", "content": " c"})[10:],
        line(
            message={"role": "assistant", "content": ""},
            done_reason="stop",
            prompt_eval_count=2,
            eval_count=3,
        ).replace(b'"done": false', b'"done": true'),
    ]

    async def body() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body()))
    async with httpx.AsyncClient(transport=transport) as client:
        reply, blocks = await collect(
            OllamaBackend("http://ollama", client), Request("chat", chat(stream=True))
        )
    assert [len(sse_events([b])) for b in blocks] == [3, 1, 1]  # role + a + b | c | finish
    assert reply.usage == Usage(2, 3, 5)


# -- the stand-in as its own process -------------------------------------------------------------


async def test_standin_runs_as_a_process(client: httpx.AsyncClient) -> None:
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.ollama", "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with trio.fail_after(15):
            readline = process.stdout.readline  # type: ignore[union-attr]
            first_line = await trio.to_thread.run_sync(readline, abandon_on_cancel=True)
        assert first_line.startswith("listening on http://")
        url = first_line.split()[-1]
        assert await OllamaBackend(url, client).list_models() == [
            "llama3.2:latest",
            "nomic-embed-text:latest",
        ]
    finally:
        process.terminate()
        await trio.to_thread.run_sync(process.wait)
        process.stdout.close()  # type: ignore[union-attr]
