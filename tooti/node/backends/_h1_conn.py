"""One TCP (or TLS) connection to a backend, read without per-read overhead.

A plain connection is a non-blocking stdlib socket driven with ``trio.lowlevel``: after a
short read (a token stream's case: the next token is not there yet) a read waits for
``wait_readable`` and then ``recv``s; after a full one it tries ``recv`` first. So a token costs
one trip through trio's I/O manager and one syscall. A read that finds data at once is not a
checkpoint; every 16th such read in a row checkpoints, so a backend that always has bytes ready
cannot keep other tasks from running. TLS (an ``https://`` backend) goes through
``trio.SSLStream``.

The body's idle limit lives here (see ``_h1``): the connection holds the request's cancel scope
and moves its deadline forward, lazily, around reads that wait.
"""

from __future__ import annotations

import math
import os
import socket
import ssl
from typing import Literal

import trio

from ._h1_body import H1Error

_READ = 64 * 1024
_EAGER_MAX = 16  # reads that found data at once before one checkpoint
_SLACK = 1.25  # the idle deadline is set this many idle limits ahead, when less than one is left

Peek = Literal["open", "closed", "data"]


class Dead(H1Error):
    """The connection broke (reset, closed before any response byte when that was asked)."""


class Conn:
    """A plain TCP connection."""

    __slots__ = ("_eager", "_fd", "_idle", "_scope", "idle_since", "sock", "waiting")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self._eager = -1  # reads that found data at once in a row; -1: wait before reading
        self._scope = trio.CancelScope()
        self._idle = math.inf
        self.idle_since = 0.0
        self.waiting = False  # in a wait for the backend (so a deadline now is the backend's fault)

    def bind(self, scope: trio.CancelScope, idle: float) -> None:
        """Reads from now on belong to ``scope``; with a finite ``idle``, keep its deadline at
        least that far ahead of every read that waits."""
        self._scope, self._idle = scope, idle

    def _push_deadline(self) -> None:
        idle = self._idle
        if idle != math.inf:
            scope, now = self._scope, trio.current_time()
            if scope.deadline - now < idle:
                scope.deadline = now + idle * _SLACK

    async def recv(self, *, dead_if_empty: bool = False) -> bytes:
        """Up to 64 KiB; ``b""`` at EOF (or :class:`Dead` when ``dead_if_empty``)."""
        if self._eager < 0:
            data = await self._recv_wait()
        else:
            try:
                data = self.sock.recv(_READ)
            except BlockingIOError:
                data = await self._recv_wait()
            except OSError as exc:
                raise Dead(_strerror(exc)) from None
            else:
                self._eager += 1
                if self._eager >= _EAGER_MAX:
                    self._eager = 0
                    await trio.lowlevel.checkpoint()
        if len(data) < _READ:
            # A short read took all there was: the next bytes are most likely not there yet, so
            # wait first (a failed recv is a syscall and an exception per token of a stream).
            self._eager = -1
        elif self._eager < 0:
            self._eager = 0
        if not data and dead_if_empty:
            raise Dead("the backend closed the connection")
        return data

    async def _recv_wait(self) -> bytes:
        self._push_deadline()
        sock, fd = self.sock, self._fd
        while True:
            self.waiting = True
            await trio.lowlevel.wait_readable(fd)
            self.waiting = False
            try:
                data = sock.recv(_READ)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise Dead(_strerror(exc)) from None
            self._push_deadline()  # a long wait leaves the next phase of the body its full limit
            return data

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)
                continue
            except OSError as exc:
                raise Dead(_strerror(exc)) from None
            view = view[sent:]

    def peek(self) -> Peek:
        """Whether the backend sent anything (or closed) while nobody was reading."""
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return "open"
        except OSError:
            return "closed"
        return "data" if data else "closed"

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        self.sock.close()


class _TLSConn(Conn):
    """An ``https://`` connection: the same interface over ``trio.SSLStream``."""

    __slots__ = ("_stream", "_tsock")

    def __init__(self, sock: socket.socket, tsock: trio.socket.SocketType, stream: trio.SSLStream) -> None:
        super().__init__(sock)
        self._tsock = tsock
        self._stream = stream

    async def recv(self, *, dead_if_empty: bool = False) -> bytes:
        self._push_deadline()
        try:
            self.waiting = True
            data = await self._stream.receive_some(_READ)
            self.waiting = False
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            raise Dead(f"TLS connection broke: {exc}") from None
        self._push_deadline()
        if not data and dead_if_empty:
            raise Dead("the backend closed the connection")
        return data

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            raise Dead(f"TLS connection broke: {exc}") from None

    def peek(self) -> Peek:
        # Pending bytes may be TLS records (a session ticket), not stray answer bytes: only
        # a closed socket counts.
        state = super().peek()
        return "open" if state == "data" else state

    def close(self) -> None:
        self._tsock.close()  # trio's close: notify_closing, then close


async def connect(host: str, port: int, tls: ssl.SSLContext | None) -> Conn:
    """A connection to the first address of ``host`` that accepts one (OSError if none)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # requests go in one send
            try:
                sock.connect(addr)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock.fileno())
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code)) from None
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        if tls is None:
            return Conn(sock)
        return await _handshake(sock, host, tls)
    raise error


async def _handshake(sock: socket.socket, host: str, tls: ssl.SSLContext) -> Conn:
    tsock = trio.socket.from_stdlib_socket(sock)
    stream = trio.SSLStream(
        trio.SocketStream(tsock),
        tls,
        server_hostname=host,
        https_compatible=True,  # servers may close without close_notify; framing says where a body ends
    )
    try:
        await stream.do_handshake()
    except BaseException:
        tsock.close()
        raise
    return _TLSConn(sock, tsock, stream)


def _strerror(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()
