"""The load driver: a small HTTP/1.1 client on raw trio sockets.

Why not httpx: on this 2-core machine the driver shares the CPU with every server under test,
and httpx costs roughly 5-10x more CPU per request than this client (see ``--driver-check`` in
bench/run.py, which measures both against the fake upstream). The client speaks just what the
three targets answer with: keep-alive, ``Content-Length`` bodies, chunked bodies and
close-delimited bodies. Stream bodies are de-chunked and scanned for content tokens as they
arrive, so time-to-first-token is taken when the first token's bytes reach the socket.

A token is counted per occurrence of ``"tok`` in the de-chunked body: the fake upstream's tokens
are ``tok0 ``, ``tok1 ``, ... and every JSON string value starts with a quote, whatever spacing
the proxy in between re-serialises with. No other key or value in the three targets' chunks
starts with ``"tok``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

TOKEN = b'"tok'
_RECV = 65536


class ConnectionLost(Exception):
    """The server closed or reset the connection; ``early`` when no response byte was read."""

    def __init__(self, message: str, early: bool) -> None:
        super().__init__(message)
        self.early = early


@dataclass
class Result:
    status: int
    started: float
    first_token: float | None
    finished: float
    tokens: int
    body: bytes
    done: bool  # a stream ended with "data: [DONE]"


class Conn:
    """One keep-alive connection to host:port, used by one task at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock: trio.SocketStream | None = None
        self.buf = bytearray()
        self.live_tokens = 0  # tokens of the request under way so far (read when cutting a stream off)
        self.busy = False

    async def connect(self) -> None:
        await self.aclose()
        self.sock = await trio.open_tcp_stream(self.host, self.port)
        self.buf = bytearray()

    async def aclose(self) -> None:
        if self.sock is not None:
            sock, self.sock = self.sock, None
            with trio.CancelScope(shield=True):
                try:
                    await sock.aclose()
                except Exception:
                    pass

    async def _fill(self, early: bool) -> None:
        assert self.sock is not None
        try:
            data = await self.sock.receive_some(_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"receive failed: {exc!r}", early) from None
        if not data:
            raise ConnectionLost("server closed the connection", early)
        self.buf += data

    async def request(
        self, raw: bytes, *, stream: bool = False, progress: Callable[[int, float], None] | None = None
    ) -> Result:
        """Send a prepared request and read the whole response.

        For a stream the body is scanned for tokens (``progress(new_tokens, when)`` is called as
        they arrive); the body is kept only for non-streams."""
        if self.sock is None:
            await self.connect()
        assert self.sock is not None
        started = time.perf_counter()
        self.live_tokens = 0
        try:
            await self.sock.send_all(raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"send failed: {exc!r}", True) from None
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            await self._fill(early=not buf)
            buf = self.buf
        head = bytes(buf[:end])
        del buf[: end + 4]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = False
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()

        tokens = 0
        first: float | None = None
        carry = b""
        body_parts: list[bytes] = []
        tail = b""

        def feed(piece: bytes) -> None:
            nonlocal tokens, first, carry, tail
            if stream:
                joined = carry + piece
                n = joined.count(TOKEN)
                if n:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    tokens += n
                    self.live_tokens = tokens
                    if progress is not None:
                        progress(n, now)
                carry = joined[-3:]
                tail = (tail + piece)[-32:]
            else:
                body_parts.append(piece)

        if chunked:
            while True:
                while True:
                    nl = buf.find(b"\r\n")
                    if nl >= 0:
                        break
                    await self._fill(early=False)
                    buf = self.buf
                size = int(bytes(buf[:nl]).split(b";", 1)[0], 16)
                if size == 0:
                    while len(buf) < nl + 4:
                        await self._fill(early=False)
                        buf = self.buf
                    del buf[: nl + 4]  # "0\r\n" + empty trailer "\r\n"
                    break
                need = nl + 2 + size + 2
                while len(buf) < need:
                    await self._fill(early=False)
                    buf = self.buf
                feed(bytes(buf[nl + 2 : nl + 2 + size]))
                del buf[:need]
        elif length >= 0:
            while len(buf) < length:
                if stream and buf:
                    feed(bytes(buf))
                    length -= len(buf)
                    buf.clear()
                await self._fill(early=False)
                buf = self.buf
            feed(bytes(buf[:length]))
            del buf[:length]
        else:  # close-delimited
            close = True
            while True:
                if buf:
                    feed(bytes(buf))
                    buf.clear()
                try:
                    await self._fill(early=False)
                except ConnectionLost:
                    break
                buf = self.buf
        finished = time.perf_counter()
        if close:
            await self.aclose()
        body = b"".join(body_parts)
        done = b"[DONE]" in tail if stream else False
        return Result(status, started, first, finished, tokens, body, done)


def build_request(
    host: str, port: int, path: str, body: bytes, extra_headers: dict[str, str] | None = None
) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\nContent-Length: {len(body)}\r\n"
    )
    for k, v in (extra_headers or {}).items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + body


async def call(conn: Conn, raw: bytes, *, stream: bool = False) -> Result:
    """``conn.request`` that reconnects once when a kept-alive connection was closed before any
    response byte (the server's idle timeout racing our request)."""
    try:
        return await conn.request(raw, stream=stream)
    except ConnectionLost as exc:
        if not exc.early:
            await conn.aclose()
            raise
        await conn.connect()
        return await conn.request(raw, stream=stream)
