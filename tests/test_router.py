"""Routing decisions: capacity, cool-down, and no starvation of unmeasured nodes."""

from __future__ import annotations

from collections import Counter

from tooti.gateway.registry import NodeEntry
from tooti.gateway.router import choose, record_failure, record_success


def _node(
    name: str, *, capacity: int = 4, in_flight: int = 0, ttft: float = 0.0, tps: float = 0.0
) -> NodeEntry:
    return NodeEntry(
        peer_id=name,
        name=name,
        namespace="",
        models=frozenset({"m"}),
        capacity=capacity,
        in_flight=in_flight,
        ttft_ms=ttft,
        tps=tps,
        healthy=True,
        version="",
        seq=1,
        last_seen=0.0,
        last_heartbeat_ms=0,
    )


def test_full_nodes_are_never_chosen() -> None:
    full, free = _node("full"), _node("free")
    full.local_in_flight = 4  # this gateway's own open exchanges fill it
    assert all(choose([full, free], set()) is free for _ in range(50))
    assert choose([full], set()) is None


def test_a_stale_heartbeat_never_blocks_an_idle_node() -> None:
    """The heartbeat's in_flight is seconds old and counts this gateway's own requests that
    have since ended: the gateway's own count is what decides."""
    idle = _node("idle", in_flight=4)
    assert idle.free() == 4
    assert choose([idle], set()) is idle


def test_a_node_that_answered_busy_is_full_until_the_mark_expires() -> None:
    n = _node("n")
    n.saturated_until = 100.0
    assert n.free(now=99.0) == 0
    assert choose([n], set(), now=99.0) is None
    assert n.free(now=100.5) == 4


def test_load_spreads_requests() -> None:
    a, b = _node("a"), _node("b")
    picks = Counter()
    for _ in range(8):  # 8 concurrent requests, as a gateway would count them
        e = choose([a, b], set())
        e.local_in_flight += 1
        picks[e.peer_id] += 1
    assert picks["a"] == picks["b"] == 4


def test_unmeasured_node_is_not_starved() -> None:
    measured, fresh = _node("measured", ttft=50.0, tps=40.0), _node("fresh")
    picks = Counter(choose([measured, fresh], set()).peer_id for _ in range(200))
    assert picks["fresh"] > 50


def test_failing_node_cools_down_and_recovers() -> None:
    bad, good = _node("bad"), _node("good")
    record_failure(bad, now=100.0)
    assert all(choose([bad, good], set(), now=100.5) is good for _ in range(20))
    assert choose([bad], set(), now=100.5) is bad  # still better than nothing
    record_success(bad)
    assert bad.failures == 0 and bad.cooldown_until == 0.0


def test_thousands_of_failures_in_a_row_keep_a_bounded_cooldown() -> None:
    # A backend down under load: every request fails at once, and the count runs past what
    # 2 ** n fits in a float (seen as OverflowError -> 500s for every request).
    bad = _node("bad")
    for _ in range(5000):
        record_failure(bad, now=100.0)
    assert bad.failures == 5000 and 100.0 < bad.cooldown_until <= 100.0 + 60.0


def test_excluded_nodes_are_skipped() -> None:
    a, b = _node("a"), _node("b")
    assert choose([a, b], {"a"}) is b
    assert choose([a, b], {"a", "b"}) is None


def test_what_the_gateway_measured_outranks_what_a_node_claims() -> None:
    """A node claiming a 1 ms TTFT that this gateway timed at 900 ms loses to an honest node
    timed at 60 ms: self-reports are only a stand-in until the gateway has measured."""
    liar, honest = _node("liar", ttft=1.0, tps=50.0), _node("honest", ttft=80.0, tps=50.0)
    for _ in range(5):
        liar.observe_ttft(900.0)
        honest.observe_ttft(60.0)
    picks = Counter(choose([liar, honest], set()).peer_id for _ in range(200))  # type: ignore[union-attr]
    assert picks["honest"] == 200


def test_a_fresh_gateway_says_unavailable_not_unknown_while_nodes_rejoin() -> None:
    from tooti.gateway.registry import LEARN_AFTER_JOIN, LEARN_MAX, Registry
    from tooti.wire import pb

    reg = Registry(ttl=15.0, learn_max=LEARN_MAX)
    t0 = reg._started
    assert reg.learning(t0 + 0.5)  # nobody back yet
    reg.update("n", pb.Announcement(seq=1, capacity=1), now=t0 + 1.0)
    assert reg.learning(t0 + 1.0 + LEARN_AFTER_JOIN / 2)  # the others are still rejoining
    assert not reg.learning(t0 + 1.0 + LEARN_AFTER_JOIN)
    assert not Registry(ttl=15.0, learn_max=LEARN_MAX).learning(t0 + LEARN_MAX + 1)  # never past it
    assert not Registry(ttl=15.0).learning(t0)  # a first start has no nodes to wait for
