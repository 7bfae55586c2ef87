"""The gateway's HTTP/1.1 server: h11 on non-blocking sockets, serving the ASGI app.

Why tooti has its own: the gateway's work per streamed token is "one chunk in from the tunnel,
one chunk out to a client". Under Hypercorn each chunk crossed five layers (the ASGI send, the
HTTP stream's state checks, h11's chunk writer, the TCP server's send lock, trio's ``send_all``
with its scheduling checkpoint) and measured ≈0.05 ms of CPU: as much as the whole rest of the
relay. Here a chunk is framed by hand and written with one ``send`` on a non-blocking socket,
and a started stream offers the ``tooti.direct`` ASGI extension (:class:`Connection.write_now`)
so the tunnel's reader writes a token straight to its client's socket without waking the
request's task at all. h11 still does everything where correctness lives: parsing request
heads and bodies (chunked, content-length, pipelining, ``Expect: 100-continue``) and writing
response heads and non-chunked bodies.

Limits, set on purpose (see ``docs/http-edge.md``): a request head may take
``KEEP_ALIVE_S`` to arrive and be ``MAX_HEAD`` bytes long; an idle keep-alive connection is
closed after ``KEEP_ALIVE_S``; nothing times a request body or a response here (the app does:
``body.BODY_TIMEOUT``, ``timeouts.*``); a connection that must close after its response is
half-closed and drained briefly first, so a client still sending its body reads the answer
instead of a reset.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING, Any

import trio

from ._hangups import HangupWatcher
from .connection import App, Connection

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("tooti.gateway.http")

#: How long a connection may sit without a request, and how long a request head may take.
KEEP_ALIVE_S = 75.0
#: Pending connections the kernel queues (the default 100 drops SYNs in a burst of clients).
BACKLOG = 4096
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


async def serve(
    app: App,
    host: str,
    port: int,
    *,
    keep_alive_s: float = KEEP_ALIVE_S,
    task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and serve ``app`` until cancelled.

    Reports the bound URLs (``http://host:port``, the real port when ``port`` is 0) through
    ``task_status`` once listening and the app's lifespan startup is done. Cancellation
    closes every connection (streams in flight end with the connection).
    """
    listeners = _listen(host, port)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_Lifespan(app).run)
            hangups = HangupWatcher()
            nursery.start_soon(hangups.run)
            for sock in listeners:
                nursery.start_soon(_accept_loop, sock, app, keep_alive_s, hangups, nursery)
            task_status.started([_url(s) for s in listeners])
    finally:
        for sock in listeners:
            trio.lowlevel.notify_closing(sock.fileno())
            sock.close()


def _listen(host: str, port: int) -> list[socket.socket]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if port == 0:
        infos = infos[:1]  # one listener: two families would get two different free ports
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _accept_loop(
    listener: socket.socket, app: App, keep_alive_s: float, hangups: HangupWatcher, nursery: trio.Nursery
) -> None:
    server = listener.getsockname()[:2]
    while True:
        try:
            sock, addr = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener.fileno())
            continue
        except OSError as exc:
            if exc.errno in _ACCEPT_RETRY_ERRNOS:
                # Out of file descriptors or memory: the connections already open go on;
                # the backlog holds new ones until something closes.
                log.warning("cannot accept connections: %s; retrying", exc)
                await trio.sleep(0.1)
            continue  # ECONNABORTED and the like: that one client gave up
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # tokens leave at once
        conn = Connection(sock, addr[:2], server, app, keep_alive_s, hangups)
        nursery.start_soon(conn.run)
        await trio.lowlevel.checkpoint()  # a flood of new connections still lets others run


class _Lifespan:
    """The ASGI lifespan protocol's startup (Quart runs its startup hooks in it). An app that
    does not support it is served anyway, as ASGI servers do. There is no shutdown phase:
    cancellation ends the gateway, and tooti's apps keep nothing that needs one."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._started = trio.Event()
        self._failure = ""

    async def run(self, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._call)
            await self._started.wait()
            if self._failure:
                raise RuntimeError(f"the app failed to start: {self._failure}")
            task_status.started()

    async def _call(self) -> None:
        try:
            await self._app({"type": "lifespan", "asgi": {"version": "3.0"}}, self._receive, self._send)
        except Exception as exc:  # noqa: BLE001 - an app without lifespan support raises here
            log.debug("ASGI lifespan not supported: %s", exc)
        self._started.set()

    async def _receive(self) -> dict[str, Any]:
        if not self._started.is_set():
            return {"type": "lifespan.startup"}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.failed":
            self._failure = str(message.get("message", "")) or "lifespan.startup.failed"
        if kind.startswith("lifespan.startup."):
            self._started.set()
