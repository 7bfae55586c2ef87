"""Choosing a node for a request.

Several stateless gateways choose at once without talking to each other, so "always the best
node" would herd every gateway onto the same node between heartbeats. We use the power of two
choices: sample two candidates at random and take the better score, which keeps load near
even with stale information. A node that fails is cooled down with exponential backoff.
"""

from __future__ import annotations

import random
import time

from .registry import NodeEntry

_COOLDOWN_BASE = 1.0
_COOLDOWN_MAX = 60.0


def score(e: NodeEntry, *, ttft_default: float = 200.0, tps_default: float = 20.0) -> float:
    """Lower is better: expected wait, driven by load, measured speed, distance and failures.
    A node not measured yet is scored with the given defaults (see ``choose``)."""
    load = e.load() / e.capacity
    # Measured here beats claimed: a node's own figure (already clamped to a plausible range)
    # only stands in until this gateway has timed it.
    ttft = e.observed_ttft_ms or e.ttft_ms or ttft_default
    tps = e.tps or tps_default
    rtt = e.rtt_ms or 0.0
    return (1.0 + 4.0 * load) * (ttft + 2000.0 / tps) + rtt + 500.0 * min(e.failures, 5)


def choose(candidates: list[NodeEntry], exclude: set[str], *, now: float | None = None) -> NodeEntry | None:
    """Pick a node with free capacity not in ``exclude``; nodes in cool-down only when
    nothing else is left. None when no candidate has capacity."""
    now = time.monotonic() if now is None else now
    pool = [e for e in candidates if e.peer_id not in exclude and e.free(now) > 0]
    warm = [e for e in pool if e.cooldown_until <= now]
    pool = warm or pool
    if not pool:
        return None
    if len(pool) == 1:
        return pool[0]
    # A node without measurements yet is assumed to be typical of its peers: a pessimistic
    # default would starve it of the very requests that would measure it.
    ttfts = sorted(e.observed_ttft_ms or e.ttft_ms for e in pool if e.observed_ttft_ms or e.ttft_ms)
    tpss = sorted(e.tps for e in pool if e.tps)
    defaults = {
        "ttft_default": ttfts[len(ttfts) // 2] if ttfts else 200.0,
        "tps_default": tpss[len(tpss) // 2] if tpss else 20.0,
    }
    a, b = random.sample(pool, 2)
    return a if score(a, **defaults) <= score(b, **defaults) else b


def record_failure(e: NodeEntry, *, now: float | None = None) -> None:
    now = time.monotonic() if now is None else now
    e.failures += 1
    # The exponent is capped: a node failing thousands of requests in a row (its backend down
    # under load) would otherwise overflow the float and fail every request that sees it.
    e.cooldown_until = now + min(_COOLDOWN_MAX, _COOLDOWN_BASE * 2 ** min(e.failures - 1, 32))


def record_success(e: NodeEntry) -> None:
    e.failures = 0
    e.cooldown_until = 0.0
