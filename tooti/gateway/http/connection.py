"""One HTTP/1.1 connection of the gateway's server: h11 parses, a non-blocking socket carries.

Requests are served one after another (pipelined ones wait, bounded, in h11's buffer). The
ASGI ``receive`` reads the socket itself, only when the app asks: the body's pieces, then -
once the body is read - ``http.disconnect`` when the client closes or the response is done.
``send`` writes a response head together with its first body piece, frames chunks by hand
and makes one ``send`` call per piece; the ``tooti.direct`` extension (:meth:`Connection.
write_now`) lets the relay write a token without waking the request's task.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from tooti.openai_shapes import error_json

from . import _h1
from ._hangups import HangupWatcher

log = logging.getLogger("tooti.gateway.http")

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: Request line + headers, at most (h11 refuses longer with 431).
MAX_HEAD = 64 * 1024
#: Pipelined bytes buffered while a request is being answered; past this, reading pauses.
_MAX_PIPELINED = 64 * 1024
#: A closing connection reads (and drops) what the client still sends for this long.
_LINGER_S = 1.0
_LINGER_BYTES = 1024 * 1024
_READ = 64 * 1024
#: A writer yields to the scheduler after this many writes that did not have to wait.
_YIELD_EVERY = 32


class _Gone(Exception):
    """The client's socket failed (reset, broken pipe)."""


def _chunk(data: bytes) -> bytes:
    """One piece of a chunked body (what h11 would write, without its per-piece work)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Connection:
    """One client connection: its requests one after another, each given to the app.

    Also the ``tooti.direct`` ASGI extension of the request in progress: :meth:`write_now`
    writes a chunk of a started chunked response without waiting, and :attr:`backlogged`
    says whether part of one is still queued (the next ``send`` flushes it).
    """

    __slots__ = (
        "_app",
        "_backlog",
        "_body_done",
        "_chunked",
        "_client",
        "_disconnect_scope",
        "_drop_body",
        "_gone",
        "_h11",
        "_hangups",
        "_head",
        "_head_sent",
        "_keep_alive_s",
        "_method",
        "_on_hangup",
        "_pipelined",
        "_response_done",
        "_server",
        "_sock",
        "_writes",
        "_writing",
    )

    def __init__(
        self,
        sock: socket.socket,
        client: tuple[str, int],
        server: tuple[str, int],
        app: App,
        keep_alive_s: float,
        hangups: HangupWatcher | None = None,
    ) -> None:
        self._sock = sock
        self._hangups = hangups
        self._client = client
        self._server = server
        self._app = app
        self._keep_alive_s = keep_alive_s
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._writes = 0
        self._reset_request()

    def _reset_request(self) -> None:
        self._method = b""
        self._head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._head_sent = False
        self._chunked = False
        self._drop_body = False
        self._body_done = False
        self._response_done = False
        self._gone = False
        self._writing = False
        self._backlog: memoryview | None = None
        self._pipelined = 0
        self._disconnect_scope: trio.CancelScope | None = None
        self._on_hangup: Callable[[], None] | None = None

    async def run(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None:
                    break
                await self._serve(request)
                if self._gone or self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                    break
                self._h11.start_next_cycle()
                self._reset_request()
            await self._close_gently()
        except (_Gone, OSError):
            pass
        finally:
            self.on_hangup(None)
            trio.lowlevel.notify_closing(self._sock.fileno())
            self._sock.close()

    # -- reading

    def _recv_now(self, size: int = _READ) -> bytes | None:
        """What the socket holds (b"" at its end), or None when nothing has arrived."""
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    async def _recv(self, size: int = _READ) -> bytes:
        while True:
            data = self._recv_now(size)
            if data is not None:
                return data
            await trio.lowlevel.wait_readable(self._sock.fileno())

    async def _next_request(self) -> h11.Request | None:
        """The next request's head; None when the client closed, went silent or sent garbage
        (answered 400/431 first)."""
        got = 0
        with trio.move_on_after(self._keep_alive_s):
            while True:
                try:
                    event = self._h11.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._refuse(exc)
                    return None
                if isinstance(event, h11.Request):
                    return event
                if event is h11.NEED_DATA:
                    # Read no more than one byte past the limit, so that h11 sees a head
                    # that is too long while it is still incomplete (and refuses it, 431).
                    data = await self._recv(max(1, MAX_HEAD + 1 - got))
                    if not data:
                        return None
                    got += len(data)
                    self._h11.receive_data(data)
                    continue
                return None  # ConnectionClosed, or PAUSED after a refused cycle
        return None

    async def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        with trio.move_on_after(5):
            await self._write(_h1.refusal(exc))

    async def receive(self) -> dict[str, Any]:
        """ASGI receive: the body's pieces, then (once it is read) ``http.disconnect`` when the
        client closes or the response is complete."""
        if self._body_done or self._gone:
            return await self._wait_disconnect()
        if self._h11.they_are_waiting_for_100_continue:
            await self._write(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                self._gone = True
                return {"type": "http.disconnect"}
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self._body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if event is h11.NEED_DATA:
                data = await self._recv()
                if not data:
                    self._gone = True
                    return {"type": "http.disconnect"}
                self._h11.receive_data(data)
                continue
            self._gone = True
            return {"type": "http.disconnect"}

    async def _wait_disconnect(self) -> dict[str, Any]:
        if not self._response_done and not self._gone:
            with trio.CancelScope() as scope:
                self._disconnect_scope = scope
                while not self._response_done:
                    if self._pipelined > _MAX_PIPELINED:
                        await trio.sleep_forever()  # until the response is done: read no more
                    data = await self._recv()
                    if not data:
                        self._gone = True
                        break
                    self._pipelined += len(data)
                    self._h11.receive_data(data)  # the next request, kept for after this one
            self._disconnect_scope = None
        return {"type": "http.disconnect"}

    def _ended(self) -> None:
        """The response is complete, or the client is gone: ``receive`` says disconnect."""
        scope = self._disconnect_scope
        if scope is not None:
            scope.cancel()
        if self._on_hangup is not None:
            callback = self.on_hangup(None)
            if self._gone and not self._response_done and callback is not None:
                callback()

    def on_hangup(self, callback: Callable[[], None] | None) -> Callable[[], None] | None:
        """Call ``callback`` once if the client goes away before the response is complete
        (instead of a task waiting in ``receive``); None stops that. Returns the callback
        replaced. Raises RuntimeError when it cannot be done (no watcher, or the body is
        not read yet): the app must watch with ``receive`` then."""
        previous, self._on_hangup = self._on_hangup, callback
        if callback is None:
            if previous is not None and self._hangups is not None:
                self._hangups.unwatch(self._sock.fileno())
            return previous
        if self._hangups is None or not self._body_done:
            self._on_hangup = previous
            raise RuntimeError("hang-ups cannot be watched on this connection now")
        if self._gone:
            self._on_hangup = None
            callback()
            return previous
        self._hangups.watch(self._sock.fileno(), self._readable)
        return previous

    def _readable(self) -> None:
        """In the watcher's task: the client sent something or closed."""
        data = self._recv_now()
        if data is None:
            return
        if not data:
            self._gone = True
            self._ended()
            return
        self._pipelined += len(data)
        self._h11.receive_data(data)  # the next request, kept for after this one
        if self._pipelined > _MAX_PIPELINED and self._hangups is not None:
            self._hangups.unwatch(self._sock.fileno())  # read no more; a write notices a hang-up

    # -- writing

    async def _write(self, data: bytes) -> None:
        if self._backlog is not None:  # what write_now could not finish goes first
            data, self._backlog = bytes(self._backlog) + data, None
        view = memoryview(data)
        self._writing = True
        try:
            while view:
                try:
                    n = self._sock.send(view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._sock.fileno())
                    continue
                except OSError:
                    self._lost()
                    raise _Gone from None
                view = view[n:]
        finally:
            self._writing = False
        self._writes += 1
        if self._writes % _YIELD_EVERY == 0:
            await trio.lowlevel.checkpoint()

    def _lost(self) -> None:
        self._gone = True
        self._ended()

    @property
    def backlogged(self) -> bool:
        return self._backlog is not None

    def write_now(self, data: bytes) -> bool:
        """Write one body chunk of the started chunked response now, without waiting.

        True when the chunk is taken: written to the socket, or (the socket's buffer being
        nearly full) partly written with the rest queued — :attr:`backlogged` is then true and
        the next ``send`` (an empty body piece will do) writes it. False when it cannot be
        taken now (no chunked response started, another write waiting, a backlog, the client
        gone): the caller sends it with ``send``.
        """
        if not self._chunked or not self._head_sent or self._writing or self._backlog is not None:
            return False
        if self._gone or self._response_done or not data:
            return False
        framed = _chunk(data)
        try:
            n = self._sock.send(framed)
        except BlockingIOError:
            return False
        except OSError:
            self._lost()
            return False
        if n < len(framed):
            self._backlog = memoryview(framed)[n:]
        return True

    async def send(self, message: dict[str, Any]) -> None:
        """ASGI send. After the client is gone, writes are dropped (the app learns of it from
        ``receive``, as the ASGI spec has it)."""
        kind = message["type"]
        if kind == "http.response.start":
            if self._head is not None:
                raise RuntimeError("response already started")
            self._head = (int(message["status"]), list(message.get("headers", ())))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if self._head is None:
            raise RuntimeError("body before http.response.start")
        if self._response_done:
            raise RuntimeError("response already complete")
        data: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if not more:
            self._response_done = True
        if self._gone:
            self._ended()
            return
        try:
            out = self._head_bytes() if not self._head_sent else b""
            if data and not self._drop_body:
                out += _chunk(data) if self._chunked else self._h11.send(h11.Data(data))
            if not more:
                out += self._h11.send(h11.EndOfMessage())
            if out or self._backlog is not None:
                await self._write(out)
        except _Gone:
            pass
        finally:
            if not more:
                self._ended()

    def _head_bytes(self) -> bytes:
        assert self._head is not None
        status, headers = self._head
        headers.append((b"date", _h1.date()))
        self._head_sent = True
        data = self._h11.send(h11.Response(status_code=status, headers=headers))
        no_body = self._method == b"HEAD" or status in (204, 304) or status < 200
        self._drop_body = no_body
        if not no_body and self._h11.their_http_version == b"1.1":
            # h11 chose the framing; it is chunked exactly when the app gave no length.
            self._chunked = not any(k.lower() == b"content-length" for k, _ in headers)
        assert data is not None
        return data

    # -- one request

    async def _serve(self, request: h11.Request) -> None:
        self._method = request.method
        scope = _h1.scope(request, self._client, self._server, {"tooti.direct": self})
        try:
            await self._app(scope, self.receive, self.send)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
        if not self._response_done and not self._gone:
            if self._head_sent:
                self._gone = True  # half a response: only closing the connection tells the client
                return
            self._head = None
            body = error_json(500, "internal error", code="internal_error")
            await self.send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                }
            )
            await self.send({"type": "http.response.body", "body": body})

    async def _close_gently(self) -> None:
        """Half-close, then read what the client still sends for a moment: closing a socket
        with unread bytes makes the kernel send a reset, which can destroy the answer just
        written before the client reads it."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        drained = 0
        with trio.move_on_after(_LINGER_S):
            while drained < _LINGER_BYTES:
                data = await self._recv()
                if not data:
                    return
                drained += len(data)
