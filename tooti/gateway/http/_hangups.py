"""Noticing clients that hang up while their answer streams, for every connection at once.

A request whose body is read has nothing more to receive, but the server must still learn when
its client goes away (to cancel the node's work and stop billing). A task per request parked
on its socket costs a task, a nursery and two cancel scopes for the stream's whole life - at
10,000 open streams, tens of megabytes. Instead every such socket sits in one epoll set of the
server's own, and one task waits for that set's descriptor to become readable: a hang-up costs
nothing until it happens.
"""

from __future__ import annotations

import select
from collections.abc import Callable

import trio

#: Events one wake-up handles before yielding to the scheduler again.
_BATCH = 256


class HangupWatcher:
    """``watch(fd, on_readable)`` until ``unwatch(fd)``; ``run()`` must be running.

    ``on_readable`` runs in the watcher's task whenever ``fd`` is readable (data or end of
    stream) and must consume that (read, or ``unwatch``): the set is level-triggered. It must
    not block or raise.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._watched: dict[int, Callable[[], None]] = {}
        self._closed = False

    def watch(self, fd: int, on_readable: Callable[[], None]) -> None:
        if self._closed:
            return  # shutting down: the server's connections are being cancelled anyway
        if fd in self._watched:
            self._watched[fd] = on_readable
            return
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._watched[fd] = on_readable

    def unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None and not self._closed:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed: the kernel dropped it from the set

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in self._epoll.poll(0, _BATCH):
                    callback = self._watched.get(fd)
                    if callback is not None:
                        callback()
                await trio.lowlevel.checkpoint()
        finally:
            # Requests still unwinding (shutdown cancels them after this task) unwatch a
            # closed set: watch/unwatch become no-ops instead of raising on it.
            self._closed = True
            self._watched.clear()
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()
