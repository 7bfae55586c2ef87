"""The node agent: joins gateways (outbound only), keeps them informed, serves inference.

For each gateway it knows (its bootstrap list, plus the gateways those tell it about) the
agent runs one session task: dial, open the control stream, send ``Hello`` (announcement +
namespace proof), and on ``Welcome`` send a heartbeat every ``heartbeat.interval_sec`` — or
at once when its models change. When the connection drops the session retries with jittered
exponential backoff. Inference streams are accepted only from gateways currently joined.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

import tooti
from tooti.p2p import keys, protocols
from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.wire import pb

from .backends.base import Backend, BackendError
from .stats import NodeStats

log = logging.getLogger("tooti.node")

_BACKOFF_MIN = 0.25
_BACKOFF_MAX = 10.0


class NamespaceRefused(Exception):
    """A gateway refused this node's namespace proof: the node must serve nothing."""


class NodeAgent:
    def __init__(
        self,
        host: IHost,
        backend: Backend,
        stats: NodeStats,
        *,
        name: str,
        namespace: str,
        namespace_secret: str | None,
        bootstrap: Iterable[str],
        allow: Iterable[str] | None,
        heartbeat_interval: float,
        refresh_interval: float,
    ) -> None:
        self.host = host
        self.backend = backend
        self.stats = stats
        self.name = name
        self.namespace = namespace
        self._secret = namespace_secret or ""
        self._bootstrap = list(bootstrap)
        self._allow = set(allow) if allow is not None else None
        self._hb_interval = heartbeat_interval
        self._refresh_interval = refresh_interval
        self.models: set[str] = set()
        self.backend_healthy = False
        self.joined: dict[str, str] = {}  # gateway peer id -> address
        self._sessions: set[str] = set()  # peer ids with a session task
        self._seq = 0
        self._changed = trio.Event()
        self.ready = trio.Event()  # set once joined to at least one gateway
        #: publishes heartbeats on the gossip topic; None: heartbeats go on control streams only
        self.gossip: Callable[[pb.Announcement], Awaitable[None]] | None = None
        self._streams: dict[str, Any] = {}  # joined gateway -> control stream
        #: DHT hooks (set by run_node): seed a joined gateway, list gateways with addresses
        self.dht_seed: Callable[[str], Awaitable[None]] | None = None
        self.dht_gateways: Callable[[], Awaitable[list[str]]] | None = None

    # -- what other parts ask -------------------------------------------------------------

    def is_gateway(self, peer_id: str) -> bool:
        return peer_id in self.joined

    def announcement(self) -> pb.Announcement:
        self._seq += 1
        s = self.stats
        return pb.Announcement(
            peer_id=self.host.get_id().to_bytes(),
            namespace=self.namespace,
            models=[pb.ModelInfo(name=m, capacity=s.capacity) for m in sorted(self.models)],
            capacity=s.capacity,
            in_flight=s.in_flight,
            queue_depth=0,
            ttft_ms_ema=s.ttft_ms_ema,
            decode_tps_ema=s.decode_tps_ema,
            backend_healthy=self.backend_healthy,
            version=tooti.__version__,
            seq=self._seq,
            timestamp_ms=int(time.time() * 1000),
            name=self.name,
        )

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; raises NamespaceRefused when a gateway rejects the namespace."""
        await self.refresh_models()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._refresh_loop)
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._dht_loop)
            for addr in self._bootstrap:
                self._start_session(addr)

    def _start_session(self, addr: str) -> None:
        peer = addr.rsplit("/p2p/", 1)[-1]
        if peer in self._sessions or peer == str(self.host.get_id()):
            return
        self._sessions.add(peer)
        self._nursery.start_soon(self._session_loop, addr, peer)

    async def refresh_models(self) -> None:
        try:
            names = set(await self.backend.list_models())
            healthy = True
        except BackendError as exc:
            log.warning("backend: %s", exc)
            names, healthy = set(), False
        if self._allow is not None:
            names &= self._allow
        if names != self.models or healthy != self.backend_healthy:
            if names != self.models:
                log.info("serving models: %s", ", ".join(sorted(names)) or "(none)")
            self.models, self.backend_healthy = names, healthy
            self._changed.set()
            self._changed = trio.Event()

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(
                self._refresh_interval if self.backend_healthy else min(2.0, self._refresh_interval)
            )
            await self.refresh_models()

    async def _session_loop(self, addr: str, peer: str) -> None:
        delay = _BACKOFF_MIN
        while True:
            started = trio.current_time()
            try:
                await self._session(addr, peer)
            except NamespaceRefused:
                raise
            except (OSError, StreamError, FrameError, Exception) as exc:  # noqa: BLE001 - retried
                log.info("gateway %s: %s: %s", peer, type(exc).__name__, exc or "connection lost")
            finally:
                self.joined.pop(peer, None)
            if trio.current_time() - started > 30:
                delay = _BACKOFF_MIN  # it was up for a while: come back quickly
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(_BACKOFF_MAX, delay * 2)

    async def _session(self, addr: str, peer: str) -> None:
        info = info_from_p2p_addr(Multiaddr(addr))
        await self.host.connect(info)
        stream = await self.host.new_stream(info.peer_id, [protocols.CONTROL])
        try:
            await stream.write(encode(pb.ControlFrame(hello=pb.Hello(announcement=self.announcement()))))
            reader = FrameReader(stream)
            msg = await reader.read_frame(pb.GatewayControl)
            if msg is not None and msg.WhichOneof("kind") == "challenge":
                await stream.write(
                    encode(
                        pb.ControlFrame(
                            proof=pb.Proof(mac=await self._prove(msg.challenge, info.peer_id.to_bytes()))
                        )
                    )
                )
                msg = await reader.read_frame(pb.GatewayControl)
            if msg is None or msg.WhichOneof("kind") != "welcome":
                raise ConnectionError("gateway closed the control stream")
            welcome = msg.welcome
            if not welcome.accepted:
                log.error("gateway %s refused this node: %s", peer, welcome.reason)
                raise NamespaceRefused(welcome.reason)
            self.joined[peer] = addr
            log.info("joined gateway %s", peer)
            self.ready.set()
            for other in welcome.gateways:
                self._start_session(other)
            self._streams[peer] = stream
            try:
                # After Welcome the gateway sends only updates of the gateway list; the end of
                # the stream means the gateway (or the path to it) is gone.
                while (update := await reader.read_frame(pb.GatewayControl)) is not None:
                    for other in update.welcome.gateways:
                        self._start_session(other)
            finally:
                self._streams.pop(peer, None)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001 - best effort
                    pass

    async def _dht_loop(self, *, interval: float = 30.0) -> None:
        """Find gateways through the DHT (every gateway provides a well-known key) and join
        those not joined yet; the gateways this node joined are its DHT entry points."""
        if self.dht_seed is None or self.dht_gateways is None:
            return
        await self.ready.wait()
        seeded: set[str] = set()
        while True:
            for peer in set(self.joined) - seeded:
                await self.dht_seed(peer)
                seeded.add(peer)
            for addr in await self.dht_gateways():
                if addr.rsplit("/p2p/", 1)[-1] not in self._sessions:
                    log.info("found gateway %s in the DHT", addr)
                    self._start_session(addr)
            await trio.sleep(interval)

    async def _prove(self, c: pb.Challenge, gateway_peer: bytes) -> bytes:
        """Answer a namespace challenge by signing it with the namespace key
        (``tooti.p2p.keys.prove_namespace``); no other scheme is answered."""
        if c.scheme != "ed25519":
            raise NamespaceRefused(f"refusing a namespace challenge of scheme {c.scheme!r}")
        try:
            return keys.prove_namespace(
                self._secret, c.nonce, self.namespace, self.host.get_id().to_bytes(), gateway_peer
            )
        except ValueError as exc:
            raise NamespaceRefused(f"cannot answer the gateway's challenge: {exc}") from None

    async def _heartbeat_loop(self) -> None:
        """One heartbeat per interval (or at once on a change), signed, on the gossip topic;
        every gateway subscribed hears it. Control streams carry it only when gossip cannot
        (no gateway subscribed yet, or gossip disabled)."""
        while True:
            with trio.move_on_after(self._hb_interval):
                await self._changed.wait()
            if not self._streams:
                continue
            ann = self.announcement()
            if self.gossip is not None:
                try:
                    await self.gossip(ann)
                    continue
                except Exception as exc:  # noqa: BLE001 - fall back to the control streams
                    log.debug("gossip heartbeat failed: %s", exc)
            frame = encode(pb.ControlFrame(heartbeat=ann))
            for stream in list(self._streams.values()):
                try:
                    await stream.write(frame)
                except Exception:  # noqa: BLE001 - that session notices and reconnects
                    pass
