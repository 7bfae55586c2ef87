"""The gateway's own HTTP/1.1 server, against raw sockets: framing, keep-alive, pipelining,
hostile heads, hang-ups, and the direct-write path the relay uses for tokens."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import pytest
import trio

from tooti.gateway.http import server

Scope = dict[str, Any]


class _App:
    """A small ASGI app: echoes, streams, and records what the server told it."""

    def __init__(self) -> None:
        self.lifespan_started = False
        self.disconnected = trio.Event()
        self.stream_started = trio.Event()
        self.direct: Any = None
        self.release = trio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            self.lifespan_started = True
            await send({"type": "lifespan.startup.complete"})
            await receive()
            return
        path = scope["path"]
        if path == "/echo":
            body = b""
            while True:
                m = await receive()
                body += m.get("body", b"")
                if not m.get("more_body"):
                    break
            doc = json.dumps({"method": scope["method"], "body": body.decode(), "path": path}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(doc)),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": doc})
        elif path == "/stream":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first;", "more_body": True})
            self.direct = scope["extensions"]["tooti.direct"]
            self.stream_started.set()
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    m = await receive()
                    assert m["type"] == "http.disconnect"
                    self.disconnected.set()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                await self.release.wait()
                await send({"type": "http.response.body", "body": b"", "more_body": True})  # flush
                await send({"type": "http.response.body", "body": b"last"})
        elif path == "/watch":  # as the gateway's inference routes do under tooti's server
            await receive()
            self.direct = scope["extensions"]["tooti.direct"]
            self.direct.on_hangup(self.disconnected.set)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first;", "more_body": True})
            self.stream_started.set()
            with trio.move_on_after(10):
                await self.disconnected.wait()
            self.direct.on_hangup(None)
        elif path == "/crash":
            raise RuntimeError("boom")
        else:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})


@asynccontextmanager
async def _serving(app: _App, **kw: Any) -> AsyncIterator[tuple[str, int]]:
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: server.serve(app, "127.0.0.1", 0, task_status=task_status, **kw)
        )
        host, port = urls[0].removeprefix("http://").rsplit(":", 1)
        try:
            yield host, int(port)
        finally:
            nursery.cancel_scope.cancel()


async def _raw(addr: tuple[str, int], data: bytes, *, until_close: bool = True) -> bytes:
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(10):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return out
                out += chunk
                if not until_close and out.endswith(b"\r\n\r\n"):
                    return out


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Parse every response in ``raw`` (a client's view of the connection)."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    conn.receive_data(b"")
    out: list[tuple[int, bytes]] = []
    status, body = 0, b""
    while True:
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:  # the server closed after its last response
                return out
            if isinstance(event, h11.Response):
                status, body = event.status_code, b""
            elif isinstance(event, h11.InformationalResponse):
                out.append((event.status_code, b""))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append((status, body))
                break
            else:
                return out
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return out
        conn.start_next_cycle()


async def test_keep_alive_pipelining_and_lifespan() -> None:
    app = _App()
    async with _serving(app) as addr:
        assert app.lifespan_started
        req = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
        raw = await _raw(addr, req + req + b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        got = _responses(raw)
        assert [s for s, _ in got] == [200, 200, 200]
        assert json.loads(got[0][1])["body"] == "abc" and json.loads(got[2][1])["method"] == "GET"
        async with httpx.AsyncClient() as client:  # a real client, one connection, three requests
            for _ in range(3):
                r = await client.post(f"http://{addr[0]}:{addr[1]}/echo", content=b"x" * 100_000)
                assert r.status_code == 200 and len(r.json()["body"]) == 100_000 and "date" in r.headers


async def test_expect_100_continue_head_and_http_1_0() -> None:
    app = _App()
    async with _serving(app) as addr:
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"
            )
            with trio.fail_after(5):
                interim = await stream.receive_some(1024)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hi")
            with trio.fail_after(5):
                final = await stream.receive_some(4096)
            assert b" 200 " in final.split(b"\r\n")[0] and final.endswith(b'"path": "/echo"}')
        head = await _raw(addr, b"HEAD /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # no body after a HEAD
        old = await _raw(addr, b"GET /echo HTTP/1.0\r\n\r\n")
        assert old.startswith(b"HTTP/1.1 200 ") and old.endswith(b'"path": "/echo"}')


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", None),
    ],
    ids=["request-line", "header-line", "head-too-large", "bad-chunk"],
)
async def test_hostile_heads_get_a_clear_refusal(request_bytes: bytes, status: int | None) -> None:
    app = _App()
    async with _serving(app) as addr:
        raw = await _raw(addr, request_bytes)
        if status is None:
            assert raw == b""  # a broken body: the app saw a disconnect, the connection closed
        else:
            (got,) = _responses(raw)
            assert got[0] == status and json.loads(got[1])["error"]["code"] == "invalid_request"
        # The server serves on.
        (ok,) = _responses(await _raw(addr, b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"))
        assert ok[0] == 200


async def test_an_app_error_is_a_500_and_idle_connections_close() -> None:
    app = _App()
    async with _serving(app, keep_alive_s=0.5) as addr:
        (got,) = _responses(await _raw(addr, b"GET /crash HTTP/1.1\r\nhost: x\r\n\r\n"))
        assert got[0] == 500 and json.loads(got[1])["error"]["code"] == "internal_error"
        with trio.fail_after(5):  # a silent connection is closed by the keep-alive timeout
            assert await _raw(addr, b"") == b""


async def test_direct_writes_keep_order_through_a_full_socket_and_hang_ups_are_seen() -> None:
    app = _App()
    async with _serving(app) as addr:
        sock = socket.create_connection(addr)
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(5):
            await app.stream_started.wait()
        direct = app.direct
        # The client reads nothing: write until the kernel's buffers are full.
        sent: list[bytes] = []
        while direct.write_now(b"tok%d;" % len(sent)) and not direct.backlogged:
            sent.append(b"tok%d;" % len(sent))
            assert len(sent) < 1_000_000
        if direct.backlogged:
            sent.append(b"tok%d;" % len(sent))  # taken, partly written, rest queued
        assert not direct.write_now(b"refused")  # nothing is taken behind a backlog
        app.release.set()
        sock.setblocking(False)
        raw = b""
        with trio.fail_after(10):
            while not raw.endswith(b"0\r\n\r\n"):
                await trio.lowlevel.wait_readable(sock.fileno())
                raw += sock.recv(1 << 20)
        sock.close()
        (got,) = _responses(raw + b"")
        assert got == (200, b"first;" + b"".join(sent) + b"last")

        # A client that hangs up mid-stream: the app's receive() says so.
        app2 = _App()
        async with _serving(app2) as addr2:
            stream = await trio.open_tcp_stream(*addr2)
            await stream.send_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
            with trio.fail_after(5):
                await app2.stream_started.wait()
            await stream.aclose()
            with trio.fail_after(5):
                await app2.disconnected.wait()


async def test_hang_ups_are_seen_by_the_shared_watcher() -> None:
    app = _App()
    async with _serving(app) as addr:
        stream = await trio.open_tcp_stream(*addr)
        await stream.send_all(b"POST /watch HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        with trio.fail_after(5):
            await app.stream_started.wait()
        await stream.aclose()
        with trio.fail_after(5):
            await app.disconnected.wait()


async def test_the_hangup_watcher_after_shutdown_is_a_no_op() -> None:
    # At shutdown the watcher's task ends before the requests it watched finish unwinding;
    # their unwatch (and any late watch) must not raise on the closed epoll set (it did: a
    # SIGTERM with a stream open logged a traceback).
    from tooti.gateway.http._hangups import HangupWatcher

    watcher = HangupWatcher()
    a, b = socket.socketpair()
    with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run)
            watcher.watch(a.fileno(), lambda: None)
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        watcher.unwatch(a.fileno())
        watcher.watch(b.fileno(), lambda: None)
        watcher.unwatch(b.fileno())


async def test_a_pipelined_flood_during_a_stream_is_bounded() -> None:
    # A client that keeps sending while its stream is answered: the server buffers at most
    # about 64 KiB of it (then reads no more), and the stream goes on.
    app = _App()
    async with _serving(app) as addr:
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(b"POST /watch HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            with trio.fail_after(5):
                await app.stream_started.wait()
            with trio.move_on_after(2):  # the kernel's buffers fill once the server stops reading
                await stream.send_all(b"x" * (4 << 20))
            await trio.lowlevel.checkpoint()
            assert app.direct._pipelined <= 2 * 64 * 1024
            assert app.direct.write_now(b"still;") and not app.disconnected.is_set()
            with trio.fail_after(5):
                got = b""
                while b"still;" not in got:
                    got += await stream.receive_some(65536)
