"""What the gateway measures itself about its nodes: round-trip time, and silence.

Self-reported figures are hints; these are facts: libp2p ping on one kept stream per node,
and the time since a node's last accepted heartbeat.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from tooti.p2p.host import reset_quietly

from .registry import Registry

log = logging.getLogger("tooti.gateway")

_PING = TProtocol("/ipfs/ping/1.0.0")  # libp2p's own ping, which every host answers


class Probes:
    def __init__(self, host: IHost, registry: Registry) -> None:
        self._host = host
        self._registry = registry
        self._rtt_samples: dict[str, collections.deque[float]] = {}

    async def run(self, joined: Callable[[], list[str]], *, interval: float = 5.0) -> None:
        """Measure the round trip to every joined node with libp2p ping on one kept stream per
        node (a new stream per probe would cost more than the probe). The RTT is the minimum of
        the last five samples: a busy or briefly frozen node answers late, and that is queueing,
        not distance (load and liveness are judged elsewhere)."""
        streams: dict[str, INetStream] = {}
        while True:
            async with trio.open_nursery() as nursery:
                for peer in joined():
                    nursery.start_soon(self._probe_rtt, peer, streams)
            for gone in set(streams) - set(joined()):
                await reset_quietly(streams.pop(gone))
                self._rtt_samples.pop(gone, None)
            await trio.sleep(interval)

    async def _probe_rtt(self, peer: str, streams: dict[str, INetStream]) -> None:
        payload = os.urandom(32)
        try:
            with trio.fail_after(1):
                stream = streams.get(peer)
                if stream is None:
                    stream = streams[peer] = await self._host.new_stream(ID.from_base58(peer), [_PING])
                start = time.perf_counter()
                await stream.write(payload)
                echoed = b""
                while len(echoed) < len(payload):
                    chunk = await stream.read(len(payload) - len(echoed))
                    if not chunk:
                        raise ConnectionError("ping stream closed")
                    echoed += chunk
                rtt = (time.perf_counter() - start) * 1000
            if echoed != payload:
                raise ValueError("bad pong")
        except Exception:  # noqa: BLE001 - a failed probe only drops the stream; heartbeats judge liveness
            stream = streams.pop(peer, None)
            if stream is not None:
                await reset_quietly(stream)
            return
        samples = self._rtt_samples.setdefault(peer, collections.deque(maxlen=5))
        samples.append(rtt)
        entry = self._registry.get(peer)
        if entry is not None:
            entry.rtt_ms = min(samples)

    async def watch_silence(self) -> None:
        """Log nodes that went silent; the registry itself ignores them past the TTL."""
        silent: set[str] = set()
        while True:
            await trio.sleep(min(1.0, self._registry.ttl / 4))
            now = time.monotonic()
            for e in list(self._registry.all()):
                if now - e.last_seen > self._registry.ttl:
                    if e.peer_id not in silent:
                        silent.add(e.peer_id)
                        log.warning(
                            "node %s missed heartbeats for %.1fs: not routable", e.peer_id, now - e.last_seen
                        )
                elif e.peer_id in silent:
                    silent.discard(e.peer_id)
                    log.info("node %s is back", e.peer_id)
