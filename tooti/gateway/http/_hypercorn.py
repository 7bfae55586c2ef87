"""One fix to Hypercorn 0.18's trio worker, applied once at import (version asserted).

When a client closes an idle keep-alive connection, ``TCPServer._read_data`` sees the end of
the stream and returns, but the connection's keep-alive timer task (``idle_task``) keeps the
connection's task group open until ``keep_alive_timeout`` expires: the socket sits in
CLOSE-WAIT (file descriptor held) for that long — 75 s here — after every such close. The
fix stops the timer as soon as reading ends, so the task group exits and the socket is
closed at once. Checked by ``tests/test_http_edge.py`` (no CLOSE-WAIT growth).
"""

from __future__ import annotations

from importlib.metadata import version

from hypercorn.trio.tcp_server import TCPServer

_PINNED = "0.18.0"


def apply() -> None:
    if getattr(TCPServer, "_tooti_patched", False):
        return
    found = version("hypercorn")
    if found != _PINNED:
        raise RuntimeError(f"tooti patches Hypercorn {_PINNED}; found {found}: re-check the fix")
    original = TCPServer._read_data

    async def _read_data(self: TCPServer) -> None:
        try:
            await original(self)
        finally:
            await self.idle_task.stop()

    TCPServer._read_data = _read_data  # type: ignore[method-assign]  # the patch itself
    TCPServer._tooti_patched = True  # type: ignore[attr-defined]  # marks it applied once
