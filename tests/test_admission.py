"""Admission queue, in process: exact slots, fairness across callers, leaving the queue.

Nodes are registry entries; "serving a request" is holding a slot and releasing it. No
timing is asserted: order and counts only.
"""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from tooti.gateway.admission import Admission, QueueFull, QueueTimeout
from tooti.gateway.registry import NodeEntry


def _node(name: str, capacity: int) -> NodeEntry:
    return NodeEntry(
        peer_id=name,
        name=name,
        namespace="",
        models=frozenset({"m"}),
        capacity=capacity,
        in_flight=0,
        ttft_ms=0.0,
        tps=0.0,
        healthy=True,
        version="",
        seq=1,
        last_seen=0.0,
        last_heartbeat_ms=0,
    )


def _admission(**kw: float) -> Admission:
    return Admission(
        timeout=kw.get("timeout", 30.0),
        max_queued=int(kw.get("max_queued", 1000)),
        max_queued_per_key=int(kw.get("max_queued_per_key", 1000)),
    )


async def test_slots_are_exact_and_waiters_get_them_in_order() -> None:
    node = _node("n", 2)
    adm = _admission()
    got: list[int] = []

    async def one(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        entry = await adm.acquire("k", "m", lambda: [node], set())
        got.append(i)
        assert node.local_in_flight <= node.capacity
        await trio.lowlevel.checkpoint()
        adm.release(entry)

    a = await adm.acquire("k", "m", lambda: [node], set())
    b = await adm.acquire("k", "m", lambda: [node], set())
    assert node.local_in_flight == 2
    async with trio.open_nursery() as nursery:
        for i in range(5):
            await nursery.start(one, i)
        await trio.testing.wait_all_tasks_blocked()
        assert adm.depth == 5
        adm.release(a)  # one slot cycles through the waiters, one at a time
    assert got == [0, 1, 2, 3, 4]  # FIFO within one caller
    adm.release(b)
    assert node.local_in_flight == 0 and adm.depth == 0


async def test_one_callers_batch_does_not_delay_anothers_request() -> None:
    """Key A queues 50 requests, then key B one. With one slot, B gets the next slot that
    frees: none of A's queued requests goes first (in general: at most one grant per other
    caller with waiters)."""
    node = _node("n", 1)
    adm = _admission()
    order: list[str] = []
    holder = await adm.acquire("A", "m", lambda: [node], set())

    async def request(caller: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        entry = await adm.acquire(caller, "m", lambda: [node], set())
        order.append(caller)
        await trio.lowlevel.checkpoint()
        adm.release(entry)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            await nursery.start(request, "A")
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(request, "B")
        await trio.testing.wait_all_tasks_blocked()
        adm.release(holder)
    assert order.index("B") == 0, order[:5]
    assert len(order) == 51


async def test_round_robin_across_three_callers() -> None:
    node = _node("n", 1)
    adm = _admission()
    order: list[str] = []
    holder = await adm.acquire("A", "m", lambda: [node], set())

    async def request(caller: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        entry = await adm.acquire(caller, "m", lambda: [node], set())
        order.append(caller)
        await trio.lowlevel.checkpoint()
        adm.release(entry)

    async with trio.open_nursery() as nursery:
        for caller in ["A"] * 4 + ["B"] * 4 + ["C"] * 4:
            await nursery.start(request, caller)
        await trio.testing.wait_all_tasks_blocked()
        adm.release(holder)
    assert order == ["B", "C", "A"] * 4, order


async def test_priority_orders_one_callers_requests() -> None:
    node = _node("n", 1)
    adm = _admission()
    order: list[int] = []
    holder = await adm.acquire("k", "m", lambda: [node], set())

    async def request(prio: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        entry = await adm.acquire("k", "m", lambda: [node], set(), priority=prio)
        order.append(prio)
        await trio.lowlevel.checkpoint()
        adm.release(entry)

    async with trio.open_nursery() as nursery:
        for prio in (0, 0, 5, 0):
            await nursery.start(request, prio)
        await trio.testing.wait_all_tasks_blocked()
        adm.release(holder)
    assert order == [5, 0, 0, 0]


async def test_a_cancelled_waiter_leaves_at_once_and_never_gets_a_slot() -> None:
    node = _node("n", 1)
    adm = _admission()
    holder = await adm.acquire("k", "m", lambda: [node], set())
    granted: list[NodeEntry] = []

    async def waiter() -> None:
        granted.append(await adm.acquire("k", "m", lambda: [node], set()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert adm.depth == 1
        nursery.cancel_scope.cancel()
    assert adm.depth == 0 and adm.abandoned == 1
    adm.release(holder)
    assert granted == [] and node.local_in_flight == 0


async def test_deadline_and_limits() -> None:
    node = _node("n", 1)
    adm = _admission(timeout=0.05, max_queued=2, max_queued_per_key=1)
    await adm.acquire("k", "m", lambda: [node], set())
    with pytest.raises(QueueTimeout):
        await adm.acquire("k", "m", lambda: [node], set())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(adm.acquire, "k", "m", lambda: [node], set())
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(QueueFull) as per_key:
            await adm.acquire("k", "m", lambda: [node], set())
        assert per_key.value.per_key
        nursery.cancel_scope.cancel()
