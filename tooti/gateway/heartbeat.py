"""Checking what a node says about itself before the registry believes any of it.

A node's announcement is hostile input like any other: every field must be finite,
non-negative and bounded, every string printable and short, and each heartbeat must be newer
than the last one from the same node (``seq`` strictly increasing, ``timestamp_ms`` within
the clock window and not going back). Self-reported speed is only a hint for routing: it is
clamped into a plausible range here, and the router weighs what the gateway measures itself.
"""

from __future__ import annotations

import math
import time

from tooti.wire import MAX_CONCURRENCY, pb

MAX_MODELS = 256
MAX_NAME_LEN = 128
MAX_VERSION_LEN = 32
#: A heartbeat's clock may differ from ours by this much (ms) before it is refused.
CLOCK_WINDOW_MS = 5 * 60 * 1000
#: Self-reported TTFT (ms) and decode speed (tokens/s) are clamped into these ranges.
TTFT_RANGE = (1.0, 600_000.0)
TPS_RANGE = (0.0, 100_000.0)


def _printable(s: str, limit: int) -> bool:
    return len(s) <= limit and s.isprintable()


def problem(ann: pb.Announcement, *, peer: bytes, previous: pb.Announcement | None = None) -> str | None:
    """Why ``ann`` from the verified peer ``peer`` must be rejected, or None if it is sound.
    ``previous`` is the last accepted announcement of the same node on this connection."""
    if ann.peer_id != peer:
        return "peer id does not match the connection's verified peer"
    if len(ann.models) > MAX_MODELS:
        return f"more than {MAX_MODELS} models"
    for m in ann.models:
        if not m.name or not _printable(m.name, MAX_NAME_LEN):
            return "model name empty, too long or not printable"
        if not 0 <= m.capacity <= MAX_CONCURRENCY:
            return "model capacity out of range"
    if not _printable(ann.name, MAX_NAME_LEN) or not _printable(ann.version, MAX_VERSION_LEN):
        return "name or version too long or not printable"
    if not _printable(ann.namespace, MAX_NAME_LEN):
        return "namespace too long or not printable"
    if not 0 <= ann.capacity <= MAX_CONCURRENCY or not 0 <= ann.in_flight <= MAX_CONCURRENCY:
        return "capacity or in-flight count out of range"
    if not 0 <= ann.queue_depth <= 1_000_000:
        return "queue depth out of range"
    for value in (ann.ttft_ms_ema, ann.decode_tps_ema):
        if not math.isfinite(value) or value < 0:
            return "speed figures must be finite and non-negative"
    now_ms = int(time.time() * 1000)
    if abs(ann.timestamp_ms - now_ms) > CLOCK_WINDOW_MS:
        return "timestamp outside the clock window (stale, replayed or future-dated)"
    if previous is not None:
        if ann.seq <= previous.seq:
            return "sequence number did not increase (replay)"
        if ann.timestamp_ms < previous.timestamp_ms:
            return "timestamp went backwards"
    return None


def clamp_hints(ann: pb.Announcement) -> None:
    """Bring self-reported speed into its plausible range, in place."""
    if ann.ttft_ms_ema:
        ann.ttft_ms_ema = min(max(ann.ttft_ms_ema, TTFT_RANGE[0]), TTFT_RANGE[1])
    ann.decode_tps_ema = min(max(ann.decode_tps_ema, TPS_RANGE[0]), TPS_RANGE[1])
