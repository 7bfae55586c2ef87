"""A lean HTTP/1.1 client for the node's backend data path, with a small keep-alive pool.

Relaying a token stream costs one socket read per token, so the read path is kept short: a
non-blocking ``recv`` on the socket (``trio.lowlevel.wait_readable`` only when nothing is
there), the body decoded by hand (``_h1_body``), and no cancel scope per read. h11 writes the
request and parses the response head only.

Time limits, one deadline per phase of a request, all on one cancel scope per request:

* connect (resolve, TCP connect, TLS): ``connect_timeout``;
* head (send the request, receive the response head): ``head_timeout``;
* body: ``idle_timeout`` of silence. The deadline is pushed forward lazily (only when a read has
  to wait and less than ``idle_timeout`` is left), so it costs a clock read per waiting read and
  a deadline change every quarter ``idle_timeout`` at most. The request ends between 1 and 1.25
  ``idle_timeout`` after the last progress of its body; progress is counted at reads, so a
  consumer that takes that long between two reads (its client not reading) ends it too, with
  an error that says so.

Pool: idle connections are reused newest first, at most ``max_idle`` are kept, and one idle for
``keepalive`` seconds is closed (checked whenever the pool is used, and by :meth:`H1Pool.sweep`).
Only a connection whose response was read to its end with nothing after it, on HTTP/1.1 without
``Connection: close``, goes back to the pool; one left early, failed or cancelled is closed,
which also tells the backend to stop. A reused connection that turns out dead before any byte
of its response is retried once on a fresh one.

Every failure is :class:`H1Error` (:class:`H1Timeout` for a deadline, :class:`H1TooLarge` for a
bounded read): a head over :data:`MAX_HEAD`, a status line that is not HTTP/1.1 or 1.0, bad body
framing, a connection that ends early. Cancellation is never caught here.
"""

from __future__ import annotations

import base64
import math
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from urllib.parse import unquote, urlsplit

import h11
import trio

from ._h1_body import Chunked, Decoder, H1Error, Length, UntilClose
from ._h1_conn import Conn, Dead, connect

#: Largest response head accepted (status line and headers).
MAX_HEAD = 64 * 1024
#: Idle connections kept per backend (the node serves its capacity at once, usually fewer).
MAX_IDLE = 64
#: Seconds an idle connection is kept: under the 5 s keep-alive timeout of uvicorn (vLLM,
#: SGLang) and cpp-httplib (llama.cpp), so the server rarely closes one as it is reused.
KEEPALIVE = 4.0
_NO_BODY_STATUS = frozenset({204, 304})


class H1Timeout(H1Error):
    """A phase of the request ran past its deadline."""


class H1TooLarge(H1Error):
    """A body outgrew the limit its reader set."""


class Response:
    """A response whose head arrived. Read the body with :meth:`receive` or :meth:`read`."""

    __slots__ = ("_conn", "_decoder", "_first", "complete", "headers", "reusable", "status")

    def __init__(
        self, conn: Conn, event: h11.Response, decoder: Decoder, first: bytes, reusable: bool
    ) -> None:
        self._conn = conn
        self.status: int = event.status_code
        self.headers: list[tuple[bytes, bytes]] = list(event.headers)
        self._decoder = decoder
        self._first = first  # body bytes that came in the same reads as the head
        self.complete = False
        self.reusable = reusable

    def header(self, name: bytes) -> str | None:
        """The value of header ``name`` (lower-case), or None; repeated ones joined by ``,``."""
        values = [v for k, v in self.headers if k == name]
        return b",".join(values).decode("latin-1") if values else None

    @property
    def declared_length(self) -> int | None:
        """The body's Content-Length, when it has one."""
        decoder = self._decoder
        return decoder.left if isinstance(decoder, Length) else None

    async def receive(self) -> bytes:
        """The next body bytes (never empty), or ``b""`` once the body is complete."""
        decoder = self._decoder
        while not decoder.done:
            raw = self._first
            if raw:
                self._first = b""
            else:
                raw = await self._conn.recv()
                if not raw:
                    decoder.eof()
                    break
            data = decoder.feed(raw)
            if data:
                return data
        if self._first:
            raise H1Error("bytes after the end of the body")
        if not self.complete:
            self._finish()
        return b""

    async def read(self, limit: int) -> bytes:
        """The rest of the body, at most ``limit`` bytes (else :class:`H1TooLarge`)."""
        declared = self.declared_length
        if declared is not None and declared > limit:
            raise H1TooLarge(f"body over {limit} bytes")
        parts: list[bytes] = []
        size = 0
        while data := await self.receive():
            size += len(data)
            if size > limit:
                raise H1TooLarge(f"body over {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    def _finish(self) -> None:
        self.complete = True
        if isinstance(self._decoder, UntilClose):
            self.reusable = False
            return
        state = self._conn.peek()
        if state == "data":  # more bytes than the framing said: the backend is broken
            raise H1Error("bytes after the end of the body")
        if state == "closed":
            self.reusable = False  # the backend closed it after a complete body: fine


class H1Pool:
    """Requests to one backend (``base_url``'s scheme, host and port) over pooled connections.

    ``tls`` is the context for an ``https://`` backend (default: httpx's, verifying with certifi).
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        head_timeout: float,
        idle_timeout: float,
        max_idle: int = MAX_IDLE,
        keepalive: float = KEEPALIVE,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("the backend URL must be http:// or https:// with a host")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            if tls is None:
                import httpx  # the CA bundle and settings httpx uses (certifi), so nothing changes

                tls = httpx.create_ssl_context(trust_env=False)
                tls.set_alpn_protocols(["http/1.1"])
            self._tls = tls
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = url.port is None or url.port == (443 if self._tls else 80)
        self.host_header = host if default_port else f"{host}:{self._port}"
        #: ``Authorization`` from credentials in the URL (``http://user:pass@host``), as httpx does.
        self.basic_auth: str | None = None
        if url.username is not None or url.password is not None:
            pair = f"{unquote(url.username or '')}:{unquote(url.password or '')}".encode()
            self.basic_auth = "Basic " + base64.b64encode(pair).decode()
        self.path_prefix = url.path.rstrip("/")
        self._connect_timeout = _seconds(connect_timeout)
        self._head_timeout = _seconds(head_timeout)
        self._idle_timeout = _seconds(idle_timeout)
        self._max_idle = max_idle
        self._keepalive = keepalive
        self._idle: deque[Conn] = deque()

    @asynccontextmanager
    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> AsyncIterator[Response]:
        """Send a request and hand back its response once the head arrived. ``headers`` has
        ``Host`` and not ``Content-Length`` (set here from ``body``). The body's idle limit
        applies while the caller reads it; leaving the context closes or pools the connection."""
        scope = trio.CancelScope()
        phase = "connecting"
        conn: Conn | None = None
        response: Response | None = None
        try:
            with scope:
                for attempt in (1, 2):
                    conn = self._checkout() if attempt == 1 else None  # the retry: a fresh one
                    reused = conn is not None
                    if conn is None:
                        phase = "connecting"
                        scope.deadline = trio.current_time() + self._connect_timeout
                        conn = await self._connect()
                    phase = "waiting for the answer's head"
                    scope.deadline = trio.current_time() + self._head_timeout
                    conn.bind(scope, math.inf)
                    try:
                        response = await self._exchange(conn, method, target, headers, body)
                        break
                    except Dead as exc:
                        conn.close()
                        conn = None
                        if not reused or attempt == 2:
                            raise H1Error(f"the connection broke: {exc}") from None
                assert response is not None and conn is not None
                phase = "reading the answer"
                scope.deadline = trio.current_time() + self._idle_timeout  # pushed on as it comes
                conn.bind(scope, self._idle_timeout)
                yield response
        finally:
            if conn is not None:
                if response is not None and response.complete and response.reusable:
                    self._checkin(conn)
                else:
                    conn.close()
        if scope.cancelled_caught:
            if phase == "reading the answer" and conn is not None and not conn.waiting:
                raise H1Timeout(f"the answer was not taken for {self._idle_timeout:g} s")
            raise H1Timeout(f"timed out {phase}")

    async def _connect(self) -> Conn:
        try:
            return await connect(self._host, self._port, self._tls)
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            raise H1Error(_describe(exc)) from None

    async def _exchange(
        self, conn: Conn, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        h = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)  # h11's default: 16 KiB
        try:
            if body:
                headers = [*headers, ("Content-Length", str(len(body)))]
            raw = h.send(h11.Request(method=method, target=target, headers=headers)) or b""
            if body:
                raw += h.send(h11.Data(data=body)) or b""
            raw += h.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise H1Error(f"the request cannot be sent: {exc}") from None
        await conn.send_all(raw)
        got = 0
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                raise H1Error(f"bad response head: {exc}") from None
            if event is h11.NEED_DATA:
                try:
                    data = await conn.recv(dead_if_empty=not got)
                except Dead as exc:
                    if got:  # part of a head came: not the stale keep-alive case a retry is for
                        raise H1Error(str(exc)) from None
                    raise
                got += len(data)
                h.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                break
            else:
                raise H1Error("the connection ended before a response head")
        first = h.trailing_data[0]
        if got - len(first) > MAX_HEAD:  # h11 bounds an incomplete head only; this, a whole one
            raise H1Error(f"response head over {MAX_HEAD} bytes")
        if event.http_version not in (b"1.1", b"1.0"):
            raise H1Error(f"the backend answered HTTP/{event.http_version.decode(errors='replace')}")
        decoder = _decoder(method, event)
        keep = event.http_version == b"1.1" and not _says_close(event.headers)
        return Response(conn, event, decoder, first, keep)

    def _checkout(self) -> Conn | None:
        self.sweep()
        while self._idle:
            conn = self._idle.pop()
            if conn.peek() == "open":  # not closed by the backend, nothing stray waiting
                return conn
            conn.close()
        return None

    def _checkin(self, conn: Conn) -> None:
        conn.idle_since = trio.current_time()
        self._idle.append(conn)
        while len(self._idle) > self._max_idle:
            self._idle.popleft().close()

    def sweep(self) -> None:
        """Close the connections idle for longer than ``keepalive``."""
        idle = self._idle
        if idle:
            oldest = trio.current_time() - self._keepalive
            while idle and idle[0].idle_since < oldest:
                idle.popleft().close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _decoder(method: str, event: h11.Response) -> Decoder:
    """How the body is framed (h11 already checked the framing headers are consistent)."""
    if method == "HEAD" or event.status_code in _NO_BODY_STATUS:
        return Length(0)
    length: int | None = None
    for name, value in event.headers:
        if name == b"transfer-encoding":
            return Chunked()  # h11 accepts no other transfer coding
        if name == b"content-length":
            length = int(value)
    return UntilClose() if length is None else Length(length)


def _says_close(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"connection" and b"close" in (t.strip() for t in value.lower().split(b","))
        for name, value in headers
    )


def _seconds(value: float | None) -> float:
    return math.inf if value is None else value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the backend's host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
