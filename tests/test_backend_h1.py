"""The node's HTTP/1.1 client for OpenAI-compatible backends (``_h1``), against a scripted server.

The server (``tests._scripted``) is a few lines of trio: it reads each request and answers with
exactly the bytes a test gives it, so the client meets well-formed answers cut at awkward places and the hostile
ones a buggy backend may send. Each hostile answer must end its one request with BackendError
(a 502 at the gateway), promptly and without buffering without bound.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests._scripted import Reader, Server, answering, chunked, json_answer, self_signed, start
from tooti.node.backends import openai as openai_backend
from tooti.node.backends._h1 import H1Pool
from tooti.node.backends._h1_body import MAX_LINE, Chunked, FramingError
from tooti.node.backends._sse import EventSplitter
from tooti.node.backends.base import BackendError, Reply, Request
from tooti.node.backends.openai import OpenAIBackend

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


def _event(i: int) -> bytes:
    delta = json.dumps({"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}], "usage": None})
    return b"data: " + delta.encode() + b"\n\n"


EVENTS = b"".join(_event(i) for i in range(12))
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":12,"total_tokens":14}}\n\n'
DONE = b"data: [DONE]\n\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _backend(server: Server, client: httpx.AsyncClient) -> OpenAIBackend:
    return OpenAIBackend(f"http://127.0.0.1:{server.port}/v1", client)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as c:
        yield c


async def _consume(backend: OpenAIBackend, request: Request) -> tuple[Reply, bytes]:
    async with backend.open(request) as reply:
        body = b"".join([block async for block in reply.blocks])
    return reply, body


# --- happy paths ---------------------------------------------------------------------------


def test_chunked_decoder_at_every_split_point() -> None:
    raw = chunked(EVENTS, 7) + b""
    for cut in range(len(raw) + 1):
        decoder = Chunked()
        got = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])
        assert got == EVENTS and decoder.done, cut
    decoder = Chunked()
    assert b"".join(decoder.feed(raw[i : i + 1]) for i in range(len(raw))) == EVENTS and decoder.done
    ext = Chunked()  # chunk extensions are ignored, trailers skipped
    assert ext.feed(b"5;name=v\r\nhello\r\n0\r\nX-T: 1\r\n\r\n") == b"hello" and ext.done


def test_event_splitter_at_every_split_point_lf_and_crlf() -> None:
    for raw in (EVENTS, EVENTS.replace(b"\n", b"\r\n")):
        for cut in range(len(raw) + 1):
            splitter = EventSplitter()
            blocks = [splitter.feed(raw[:cut]), splitter.feed(raw[cut:])]
            assert b"".join(blocks) == EVENTS and splitter.pending == b"", cut
            assert all(b.endswith(b"\n\n") for b in blocks if b)
        splitter = EventSplitter()
        assert b"".join(splitter.feed(raw[i : i + 1]) for i in range(len(raw))) == EVENTS


async def test_sse_stream_cut_at_awkward_byte_boundaries(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    raw = SSE_HEAD + chunked(EVENTS.replace(b"\n", b"\r\n") + USAGE + DONE, 5)
    sizes = [1, 2, 3, 5, 8, 13]
    pieces, at, k = [], 0, 0
    while at < len(raw):
        pieces.append(raw[at : at + sizes[k % len(sizes)]])
        at += sizes[k % len(sizes)]
        k += 1
    server = await start(nursery, answering(*pieces))
    reply, body = await _consume(_backend(server, client), Request("chat", STREAM))
    assert reply.status == 200 and reply.content_type == "text/event-stream"
    assert body == EVENTS  # CRLF made LF; the usage-only chunk and [DONE] dropped
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    _, with_usage = await _consume(_backend(server, client), Request("chat", STREAM, client_usage=True))
    assert with_usage == EVENTS + USAGE


async def test_content_length_json_and_keep_alive_reuse(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    doc = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    server = await start(nursery, answering(json_answer(doc)))
    backend = _backend(server, client)
    for _ in range(2):
        reply, body = await _consume(backend, Request("chat", CHAT))
        got = json.loads(body)
        assert got["choices"][0]["logprobs"] is None and got["choices"][0]["message"]["refusal"] is None
        assert reply.usage is not None and reply.usage.total_tokens == 3
    assert server.connections == 1 and len(server.requests) == 2
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\ncontent-type: application/json\r\n" in first.lower()
    assert json.loads(first.split(b"\r\n\r\n", 1)[1]) == CHAT


async def test_no_reuse_after_a_cancelled_request(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    async def handler(server: Server, stream: trio.abc.Stream, reader: Reader) -> None:
        server.requests.append(await reader.request() or b"")
        await stream.send_all(SSE_HEAD + chunked(_event(0), 64))
        await server.until_closed(reader)  # the rest of the stream never comes

    server = await start(nursery, handler)
    backend = _backend(server, client)
    with trio.CancelScope() as cancelled:
        async with backend.open(Request("chat", STREAM)) as reply:
            async for _ in reply.blocks:
                cancelled.cancel()
                await trio.lowlevel.checkpoint()
    assert cancelled.cancelled_caught
    with trio.fail_after(10):
        await server.client_closed.wait()  # cancelling closed the backend request
    server.client_closed = trio.Event()
    with trio.CancelScope() as second:
        async with backend.open(Request("chat", STREAM)) as reply:
            async for _ in reply.blocks:
                second.cancel()
    assert server.connections == 2


async def test_stale_keep_alive_connection_is_retried_once_on_a_fresh_one(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    ok = json_answer({"choices": []})
    both_in = trio.Event()

    async def handler(server: Server, stream: trio.abc.Stream, reader: Reader) -> None:
        index = server.connections
        if index <= 2:  # the two kept ones: answer once, then drop the next request unanswered
            server.requests.append(await reader.request() or b"")
            if index == 2:
                both_in.set()
            await both_in.wait()
            await stream.send_all(ok)
            await reader.request()
            return
        while await reader.request():
            await stream.send_all(ok)

    server = await start(nursery, handler)
    backend = _backend(server, client)
    async with trio.open_nursery() as both:  # two connections in the pool
        both.start_soon(_consume, backend, Request("chat", CHAT))
        both.start_soon(_consume, backend, Request("chat", CHAT))
    reply, _ = await _consume(backend, Request("chat", CHAT))  # kept one: dead; retry: a new one
    assert reply.status == 200 and server.connections == 3


async def test_http_1_0_close_delimited_body_is_read_and_not_reused(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    answer = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"choices":[]}'
    server = await start(nursery, answering(answer, then_close=True))
    backend = _backend(server, client)
    for _ in range(2):
        _, body = await _consume(backend, Request("chat", CHAT))
        assert json.loads(body) == {"choices": []}
    assert server.connections == 2


async def test_idle_connections_expire(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(json_answer({})))
    pool = H1Pool(
        f"http://127.0.0.1:{server.port}", connect_timeout=5, head_timeout=5, idle_timeout=5, keepalive=0
    )
    for _ in range(2):
        async with pool.request("GET", "/x", [("Host", "x")], b"") as response:
            assert await response.read(1024) == b"{}"
    with trio.fail_after(10):
        await server.client_closed.wait()  # the expired one was closed
    assert server.connections == 2


async def test_idle_connections_kept_are_bounded(nursery: trio.Nursery) -> None:
    both_in = trio.Event()

    async def handler(server: Server, stream: trio.abc.Stream, reader: Reader) -> None:
        while await reader.request() is not None:
            if server.connections == 2:
                both_in.set()
            await both_in.wait()  # two requests in flight at once, so two connections
            await stream.send_all(json_answer({}))
        server.client_closed.set()

    server = await start(nursery, handler)
    pool = H1Pool(
        f"http://127.0.0.1:{server.port}", connect_timeout=5, head_timeout=5, idle_timeout=5, max_idle=1
    )

    async def one() -> None:
        async with pool.request("POST", "/x", [("Host", "x")], b"{}") as response:
            assert await response.read(1024) == b"{}"

    async with trio.open_nursery() as both:
        both.start_soon(one)
        both.start_soon(one)
    with trio.fail_after(10):
        await server.client_closed.wait()  # one of the two was closed: only one is kept
    await one()
    assert server.connections == 2


async def test_credentials_reach_the_backend(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    server = await start(nursery, answering(json_answer({})))
    keyed = OpenAIBackend(f"http://127.0.0.1:{server.port}", client, api_key="sk-1")
    await _consume(keyed, Request("chat", CHAT))
    in_url = OpenAIBackend(f"http://u%40x:p@127.0.0.1:{server.port}", client, api_key="sk-1")
    await _consume(in_url, Request("chat", CHAT))
    assert b"\r\nAuthorization: Bearer sk-1\r\n" in server.requests[0]
    assert b"\r\nAuthorization: Basic dUB4OnA=\r\n" in server.requests[1]  # base64("u@x:p")


async def test_error_status_keeps_the_backend_message(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    err = {
        "error": {"message": "too long", "type": "invalid_request_error", "code": 400, "param": "messages"}
    }
    server = await start(nursery, answering(json_answer(err, status=400)))
    reply, body = await _consume(_backend(server, client), Request("chat", STREAM))
    got = json.loads(body)["error"]
    assert reply.status == 400 and got["message"] == "too long" and got["param"] == "messages"
    assert got["code"] is None  # llama.cpp's integer code only repeats the status


async def test_passthrough_bytes_and_cap(
    nursery: trio.Nursery, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    server = await start(nursery, answering(answer))
    backend = _backend(server, client)
    reply, body = await _consume(backend, Request("passthrough", {}, method="GET", path="/v1/x?y=1"))
    assert (reply.content_type, body) == ("text/plain", b"hello")
    assert server.requests[0].startswith(b"GET /v1/x?y=1 HTTP/1.1\r\n")
    monkeypatch.setattr(openai_backend, "_PASSTHROUGH_MAX", 4)
    with pytest.raises(BackendError) as err:
        await _consume(backend, Request("passthrough", {}, method="GET", path="/v1/x"))
    assert err.value.code == "response_too_large"


# --- hostile backends ----------------------------------------------------------------------

_HOSTILE: dict[str, tuple[list[bytes], str]] = {
    "head over 64 KiB": ([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"], "head over"),
    "endless head": ([b"HTTP/1.1 200 OK\r\n"] + [b"X-More: " + b"a" * 4000 + b"\r\n"] * 64, "too long"),
    "HTTP/2 status line": ([b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"], "HTTP/2.0"),
    "not HTTP": ([b"ICY 200 OK\r\n\r\n"], "status line"),
    "garbage status": ([b"HTTP/1.1 two hundred\r\n\r\n"], "status line"),
    "closed before a head": ([], "closed the connection"),
    "garbage chunk size": ([SSE_HEAD, b"zz\r\n" + _event(0) + b"\r\n"], "not hex"),
    "signed chunk size": ([SSE_HEAD, b"+5\r\nhello\r\n0\r\n\r\n"], "not hex"),
    "enormous chunk-size line": ([SSE_HEAD, b"f" * (MAX_LINE + 8)], "line too long"),
    "17 hex digits": ([SSE_HEAD, b"1" * 17 + b"\r\n"], "not hex"),
    "LF-only chunk line": ([SSE_HEAD, b"5\nhello\n0\n\n"], "ended inside a chunked body"),
    "chunk without CRLF after it": ([SSE_HEAD, b"5\r\nhelloXX0\r\n\r\n"], "not followed by CRLF"),
    "stops mid-chunk": ([SSE_HEAD, b"100\r\n" + _event(0)], "ended inside a chunked body"),
    "stops inside an event": ([SSE_HEAD, chunked(b"data: {", 64)], "e"),  # stream: event; else JSON
    "bytes after the last chunk": ([SSE_HEAD, chunked(_event(0), 64) + b"junk"], "after the end"),
    "body longer than Content-Length": (
        [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}{}"],
        "longer than its Content-Length",
    ),
    "body shorter than Content-Length": (
        [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{}"],
        "before Content-Length bytes",
    ),
    "invalid JSON": (
        [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{x"],
        "invalid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE))
@pytest.mark.parametrize("stream", [False, True])
async def test_hostile_backend_ends_the_request_with_backend_error(
    nursery: trio.Nursery, client: httpx.AsyncClient, case: str, stream: bool
) -> None:
    pieces, why = _HOSTILE[case]
    server = await start(nursery, answering(*pieces, then_close=True))
    with trio.fail_after(10), pytest.raises(BackendError, match=why) as err:  # no hang
        await _consume(_backend(server, client), Request("chat", STREAM if stream else CHAT))
    assert err.value.status == 502


async def test_an_event_that_never_ends_is_bounded(
    nursery: trio.Nursery, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_backend, "_EVENT_MAX", 4096)
    endless = [SSE_HEAD] + [b"400\r\n" + b"a" * 1024 + b"\r\n"] * 16
    server = await start(nursery, answering(*endless))
    with trio.fail_after(10), pytest.raises(BackendError) as err:
        await _consume(_backend(server, client), Request("chat", STREAM))
    assert err.value.code == "response_too_large"


async def test_a_document_over_its_bound_is_refused(
    nursery: trio.Nursery, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_backend, "_DOCUMENT_MAX", 1024)
    declared = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
    chunked_head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for answer in ([declared], [chunked_head, chunked(b" " * 4096, 512)]):
        server = await start(nursery, answering(*answer))
        with trio.fail_after(10), pytest.raises(BackendError) as err:
            await _consume(_backend(server, client), Request("chat", CHAT))
        assert err.value.code == "response_too_large"


async def test_silent_backend_times_out(nursery: trio.Nursery) -> None:
    async def silent_after(server: Server, stream: trio.abc.Stream, reader: Reader) -> None:
        await reader.request()
        if server.connections == 2:
            await stream.send_all(SSE_HEAD + b"%x\r\n%s\r\n" % (len(_event(0)), _event(0)))
        await server.until_closed(reader)

    server = await start(nursery, silent_after)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=0.2)) as short:
        backend = _backend(server, short)
        for _ in range(2):  # no head at all; then a head and one event, then silence
            with trio.fail_after(10), pytest.raises(BackendError, match="timed out"):
                await _consume(backend, Request("chat", STREAM))


async def test_an_answer_not_taken_for_the_idle_limit_ends(nursery: trio.Nursery) -> None:
    async def one_event(server: Server, stream: trio.abc.Stream, reader: Reader) -> None:
        await reader.request()
        await stream.send_all(SSE_HEAD + b"%x\r\n%s\r\n" % (len(_event(0)), _event(0)))
        await server.until_closed(reader)

    server = await start(nursery, one_event)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=0.1)) as short:
        with trio.fail_after(10), pytest.raises(BackendError, match="not taken"):
            async with _backend(server, short).open(Request("chat", STREAM)) as reply:
                async for _ in reply.blocks:
                    await trio.sleep(5)  # a consumer stuck far past the idle limit


async def test_unreachable_backend(client: httpx.AsyncClient) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there now
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", client)
    with pytest.raises(BackendError, match="unreachable"):
        await _consume(backend, Request("chat", CHAT))


def test_chunk_size_line_bound_is_exact() -> None:
    longest = b"5;" + b"x" * (MAX_LINE - 2)  # a chunk extension makes the line this long
    assert Chunked().feed(longest + b"\r\nhello") == b"hello"
    with pytest.raises(FramingError):
        Chunked().feed(longest + b"x\r\nhello")
    held = Chunked()  # the same line over two reads
    assert held.feed(longest) == b"" and held.feed(b"\r\nhello") == b"hello"
    with pytest.raises(FramingError):
        Chunked().feed(longest + b"x")


async def test_https_backend_stream_and_reuse(nursery: trio.Nursery, tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    handler = answering(SSE_HEAD + chunked(EVENTS + DONE, 9))
    server = Server(handler)
    listeners = await trio.open_ssl_over_tcp_listeners(0, server_tls, host="127.0.0.1", https_compatible=True)
    server.port = listeners[0].transport_listener.socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, server.serve, listeners)
    pool = H1Pool(
        f"https://127.0.0.1:{server.port}", connect_timeout=5, head_timeout=5, idle_timeout=5, tls=client_tls
    )
    for _ in range(2):
        async with pool.request("POST", "/v1/chat/completions", [("Host", "x")], b"{}") as response:
            splitter, got = EventSplitter(), b""
            while data := await response.receive():
                got += splitter.feed(data)
        assert got == EVENTS + DONE
    assert server.connections == 1 and len(server.requests) == 2
