"""The gateway's live view of the network, built from the network alone.

Entries come from nodes' control streams (a node joined this gateway) and heartbeats. An entry
is dropped at once when its node's connection goes away, and ignored for routing once its last
heartbeat is older than the TTL (a frozen process sends no TCP close); a later heartbeat brings
it back. Nothing here is persisted: a gateway restart rebuilds it within one heartbeat.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import trio

from tooti.wire import pb

DEFAULT_ROUTES = frozenset({"chat", "completions", "embeddings"})  # what every adapter serves
_MAX_REMEMBERED = 10_000
#: After a start, how long model names are only "not yet seen": see ``Registry.learning``.
LEARN_MAX = 5.0
LEARN_AFTER_JOIN = 1.5  # (namespace, model) pairs kept for "known but unavailable"


@dataclasses.dataclass
class NodeEntry:
    peer_id: str
    name: str
    namespace: str
    models: frozenset[str]
    capacity: int
    in_flight: int  # as the node last reported it
    ttft_ms: float
    tps: float
    healthy: bool
    version: str
    seq: int
    last_seen: float  # monotonic
    last_heartbeat_ms: int  # the node's wall clock, for display
    rtt_ms: float | None = None
    local_in_flight: int = 0  # exchanges this gateway has open to the node right now
    failures: int = 0
    cooldown_until: float = 0.0
    # Until then the node is taken as full: it answered "busy" (its slots are held by other
    # gateways' requests, which this gateway cannot count).
    saturated_until: float = 0.0
    # Paths the node answered 501 unsupported_route for (its backend lacks them): learned
    # from its answers, reset when it rejoins.
    unsupported: set[str] = dataclasses.field(default_factory=set)
    #: routes the node declares its backend relays (see Announcement.routes)
    routes: frozenset[str] = DEFAULT_ROUTES

    # What this gateway measured itself: time from sending a request to the node's answer
    # starting (EMA, ms; 0 until measured). Routing prefers it to the node's own claim.
    observed_ttft_ms: float = 0.0

    def observe_ttft(self, ms: float) -> None:
        self.observed_ttft_ms = ms if not self.observed_ttft_ms else 0.8 * self.observed_ttft_ms + 0.2 * ms

    def load(self) -> int:
        """This gateway's own open exchanges with the node: exact and current for its own
        traffic. The heartbeat's ``in_flight`` is seconds old and counts those same requests,
        so it is shown but never used to refuse: other gateways' load shows up as ``busy``
        answers instead (see ``saturated_until``)."""
        return self.local_in_flight

    def free(self, now: float | None = None) -> int:
        """Slots this gateway may still use on the node."""
        if self.saturated_until and (time.monotonic() if now is None else now) < self.saturated_until:
            return 0
        return max(0, self.capacity - self.local_in_flight)


class Registry:
    def __init__(self, *, ttl: float, remember_sec: float = 86400.0, learn_max: float = 0.0) -> None:
        self.ttl = ttl
        self._nodes: dict[str, NodeEntry] = {}
        self.rejected_heartbeats = 0
        self._changed = trio.Event()
        #: (namespace, model) -> when a node last offered it (monotonic); see ``known``
        self._offered: dict[tuple[str, str], float] = {}
        self._remember = remember_sec
        self._started = time.monotonic()
        self._first_join: float | None = None
        self._learn_max = learn_max

    def learning(self, now: float | None = None) -> bool:
        """True right after a restart (``learn_max`` > 0), while the nodes are still rejoining
        (they come back within a second or two): until LEARN_AFTER_JOIN after the first node
        joined, and never longer than ``learn_max``. Meanwhile an unknown model may only be
        absent, not unknown. A gateway on its first start has no nodes to wait for."""
        now = time.monotonic() if now is None else now
        if self._learn_max <= 0 or now - self._started >= self._learn_max:
            return False
        return self._first_join is None or now - self._first_join < LEARN_AFTER_JOIN

    def update(self, peer_id: str, ann: pb.Announcement, *, now: float | None = None) -> NodeEntry | None:
        """Insert or refresh the entry for ``peer_id`` from an announcement it was verified to
        have sent. Out-of-order announcements (older ``seq``) are ignored and return None."""
        now = time.monotonic() if now is None else now
        entry = self._nodes.get(peer_id)
        if entry is not None and ann.seq and ann.seq <= entry.seq and now - entry.last_seen < self.ttl:
            return None
        fields: dict[str, Any] = dict(
            name=ann.name,
            namespace=ann.namespace,
            models=frozenset(m.name for m in ann.models),
            capacity=max(1, ann.capacity),
            in_flight=ann.in_flight,
            ttft_ms=ann.ttft_ms_ema,
            tps=ann.decode_tps_ema,
            healthy=ann.backend_healthy,
            version=ann.version,
            seq=ann.seq,
            last_seen=now,
            last_heartbeat_ms=ann.timestamp_ms,
            routes=frozenset(r for r in ann.routes[:16] if len(r) <= 32) or DEFAULT_ROUTES,
        )
        for m in fields["models"]:
            self._offered[(ann.namespace, m)] = now
        if len(self._offered) > _MAX_REMEMBERED:
            # A node could announce endless names: keep the most recently offered ones.
            keep = sorted(self._offered.items(), key=lambda kv: kv[1])[-_MAX_REMEMBERED // 2 :]
            self._offered = dict(keep)
        if entry is None:
            if self._first_join is None:
                self._first_join = now
            entry = NodeEntry(peer_id=peer_id, **fields)
            self._nodes[peer_id] = entry
        else:
            for k, v in fields.items():
                setattr(entry, k, v)
        self._notify()
        return entry

    def drop(self, peer_id: str) -> None:
        if self._nodes.pop(peer_id, None) is not None:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Wait until an entry is added, refreshed or dropped (for waiting without polling)."""
        await self._changed.wait()

    def get(self, peer_id: str) -> NodeEntry | None:
        return self._nodes.get(peer_id)

    def live(self, now: float | None = None) -> list[NodeEntry]:
        """Entries whose last heartbeat is within the TTL."""
        now = time.monotonic() if now is None else now
        return [e for e in self._nodes.values() if now - e.last_seen <= self.ttl]

    def all(self) -> Iterable[NodeEntry]:
        return self._nodes.values()

    def namespaces(self) -> set[str]:
        return {e.namespace for e in self.live() if e.namespace}

    def serving(self, model: str, namespaces: set[str] | None) -> list[NodeEntry]:
        """Live, healthy entries serving ``model``; only within ``namespaces`` when given
        (``""`` in that set stands for the public pool)."""
        return [
            e
            for e in self.live()
            if e.healthy and model in e.models and (namespaces is None or e.namespace in namespaces)
        ]

    def known(self, model: str, namespaces: set[str] | None, now: float | None = None) -> bool:
        """Whether a node offered ``model`` (within ``namespaces`` when given) in the last
        ``remember_sec``: the model is then temporarily unavailable, not unknown."""
        now = time.monotonic() if now is None else now
        return any(
            m == model and (namespaces is None or ns in namespaces) and now - at <= self._remember
            for (ns, m), at in self._offered.items()
        )

    def model_ids(self) -> list[tuple[str, str]]:
        """(model id, owner) pairs for /v1/models: ``model`` for every model, plus
        ``namespace:model`` for models served under a namespace."""
        out: dict[str, str] = {}
        for e in self.live():
            if not e.healthy:
                continue
            for m in e.models:
                out.setdefault(m, e.namespace or "tooti")
                if e.namespace:
                    out[f"{e.namespace}:{m}"] = e.namespace
        return sorted(out.items())
