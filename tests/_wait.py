"""Bounded waits on conditions observed in another process (or another task), for tests.

A gateway or node is a separate OS process with no event the test could wait on, so tests
poll the condition itself with a deadline; never a bare sleep standing in for one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio


def until(cond: Callable[[], object], timeout: float = 10.0, *, interval: float = 0.02) -> float:
    """Poll ``cond()`` until truthy; return the seconds it took. AssertionError after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not reached in {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


async def until_async(
    cond: Callable[[], object] | Callable[[], Awaitable[object]],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
) -> float:
    """Like :func:`until` inside trio, for a plain or an async condition."""
    start = trio.current_time()
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return trio.current_time() - start
        if trio.current_time() - start > timeout:
            raise AssertionError(f"condition not reached in {timeout} s")
        await trio.sleep(interval)
