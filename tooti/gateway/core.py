"""The gateway's network side: nodes joining, the registry, and dispatching a request.

HTTP lives in ``app.py``; this module knows nothing of Quart. ``Gateway.dispatch`` is the
one place that turns (route, body, model) into an open exchange with some node, retrying on
another node while the client has seen nothing.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.p2p.host import peer_of
from tooti.store import NamespaceVerifier
from tooti.wire import pb

from .dispatch import Dispatcher
from .registry import Registry
from .relay import StreamPool, reset_quietly

log = logging.getLogger("tooti.gateway")

#: namespace -> its verifier (public keys, allowed peer ids, revision), or None when unknown
NamespaceCheck = Callable[[str], Awaitable[NamespaceVerifier | None]]

_HELLO_TIMEOUT = 10.0
_PING = TProtocol("/ipfs/ping/1.0.0")  # libp2p's own ping, which every host answers
_CONTROL_MAX_FRAME = 256 * 1024


class Gateway:
    def __init__(
        self,
        host: IHost,
        *,
        ttl: float,
        max_attempts: int,
        first_token_timeout: float,
        total_timeout: float,
        namespace_check: NamespaceCheck | None,
        known_namespaces: Callable[[], set[str]] = set,
    ) -> None:
        self.host = host
        self.peer_id = str(host.get_id())
        self.registry = Registry(ttl=ttl)
        self.pool = StreamPool(host)
        self.max_attempts = max_attempts
        self.first_token_timeout = first_token_timeout
        self.total_timeout = total_timeout
        self._namespace_check = namespace_check
        self._known_namespaces = known_namespaces
        self.other_gateways: dict[str, str] = {}  # peer id -> dialable multiaddr with /p2p/
        self.addrs: list[str] = []  # this gateway's own dialable multiaddrs, set once listening
        self.refused_nodes = 0
        self._node_streams: dict[str, INetStream] = {}  # joined nodes' control streams
        self._bound: dict[str, str] = {}  # joined node -> the namespace it proved
        self.heartbeats = {"gossip": 0, "control": 0}
        self.dispatcher = Dispatcher(
            self.registry,
            self.pool,
            max_attempts=max_attempts,
            first_token_timeout=first_token_timeout,
            total_timeout=total_timeout,
            known_namespaces=known_namespaces,
        )

    # -- nodes joining ------------------------------------------------------------------------

    async def handle_control(self, stream: INetStream) -> None:
        """A node's control stream: Hello -> (Challenge -> Proof) -> Welcome, then heartbeats
        until it goes away."""
        peer = str(peer_of(stream))
        reader = FrameReader(stream, max_frame=_CONTROL_MAX_FRAME)
        with trio.fail_after(_HELLO_TIMEOUT):
            first = await reader.read_frame(pb.ControlFrame)
            if first is None or first.WhichOneof("kind") != "hello":
                raise FrameError("control stream must start with Hello")
            ann = first.hello.announcement
            reason = await self._admission_problem(peer, ann, stream, reader)
        if reason:
            self.refused_nodes += 1
            log.warning("refused node %s: %s", peer, reason)
            await stream.write(
                encode(
                    pb.GatewayControl(
                        welcome=pb.Welcome(
                            accepted=False, reason=reason, gateway_peer_id=self.host.get_id().to_bytes()
                        )
                    )
                )
            )
            await stream.close()
            return
        namespace = ann.namespace
        await stream.write(
            encode(
                pb.GatewayControl(
                    welcome=pb.Welcome(
                        accepted=True,
                        gateway_peer_id=self.host.get_id().to_bytes(),
                        gateways=sorted(self.other_gateways.values()),
                    )
                )
            )
        )
        self.registry.update(peer, ann)
        self._node_streams[peer] = stream
        self._bound[peer] = namespace
        log.info(
            "node %s joined (%s) serving %s",
            peer,
            namespace or "public",
            ", ".join(m.name for m in ann.models) or "nothing yet",
        )
        try:
            while True:
                frame = await reader.read_frame(pb.ControlFrame)
                if frame is None:
                    break
                if frame.WhichOneof("kind") != "heartbeat":
                    raise FrameError("only heartbeats may follow Hello")
                hb = frame.heartbeat
                # Claims must match what this connection proved at Hello.
                if hb.peer_id != ann.peer_id or hb.namespace != namespace:
                    self.registry.rejected_heartbeats += 1
                    log.warning("heartbeat from %s rejected: claims do not match the sender", peer)
                    continue
                self.registry.update(peer, hb)
                self.heartbeats["control"] += 1
        except StreamError:
            pass
        finally:
            # Evict at once: a dropped connection is a dead node for routing purposes.
            self.registry.drop(peer)
            self.pool.forget(peer)
            if self._node_streams.get(peer) is stream:
                del self._node_streams[peer]
                self._bound.pop(peer, None)
            log.info("node %s left", peer)

    async def _admission_problem(
        self, peer: str, ann: pb.Announcement, stream: INetStream, reader: FrameReader
    ) -> str | None:
        """Why this node may not join (None: it may). A namespace is granted to an allow-listed
        peer id, or to a node that signs a challenge with one of the namespace's keys;
        the private key never crosses the network."""
        if ann.peer_id != _peer_bytes(peer):
            return "announcement peer id does not match the connection's verified peer id"
        if not ann.namespace or self._namespace_check is None:
            return None
        verifier = await self._namespace_check(ann.namespace)
        if verifier is None:
            return f"namespace '{ann.namespace}' is not registered"
        if peer in verifier.allowed_peers:
            return None
        if not verifier.public_keys:
            return f"namespace '{ann.namespace}' has no key (rotate it)"
        nonce = os.urandom(32)
        await stream.write(encode(pb.GatewayControl(challenge=pb.Challenge(nonce=nonce, scheme="ed25519"))))
        answer = await reader.read_frame(pb.ControlFrame)
        if answer is None or answer.WhichOneof("kind") != "proof":
            return "no proof of the namespace key"
        if not verifier.check_proof(answer.proof.mac, nonce, ann.peer_id, self.host.get_id().to_bytes()):
            return f"not authorised for namespace '{ann.namespace}' (wrong key)"
        return None

    def on_gossip_heartbeat(self, sender: str, ann: pb.Announcement) -> None:
        """A heartbeat from the gossip topic. The signature already proved ``sender`` wrote it
        and the validator that its peer id is the sender's; here its namespace must be the one
        that sender proved on this gateway. Heartbeats from nodes not joined here are ignored:
        this gateway could not reach them anyway."""
        bound = self._bound.get(sender)
        if bound is None:
            return
        if ann.namespace != bound:
            self.registry.rejected_heartbeats += 1
            log.warning("gossip heartbeat from %s rejected: namespace claim does not match", sender)
            return
        self.registry.update(sender, ann)
        self.heartbeats["gossip"] += 1

    def on_gossip_gateway(self, sender: str, addrs: list[str]) -> None:
        self._merge(pb.Welcome(accepted=True, gateway_peer_id=_peer_bytes(sender), gateways=addrs), sender)

    # -- other gateways -------------------------------------------------------------------------
    #
    # Every node joins every gateway, dialing out to each: a node behind NAT needs no inbound
    # port, each gateway gets a direct (not relayed) connection and the node's namespace proof,
    # and losing one gateway loses nothing. Gateways learn of each other from their bootstrap
    # lists and by exchanging what they know (PEERING), and tell their nodes on the control
    # stream whenever the list grows.

    def _info(self) -> pb.Welcome:
        return pb.Welcome(
            accepted=True,
            gateway_peer_id=self.host.get_id().to_bytes(),
            gateways=sorted({*self.addrs, *self.other_gateways.values()}),
        )

    def _merge(self, info: pb.Welcome, verified_peer: str) -> None:
        if info.gateway_peer_id and info.gateway_peer_id != _peer_bytes(verified_peer):
            raise FrameError("peering info names another peer than the connection's")
        new = False
        for addr in info.gateways:
            peer = addr.rsplit("/p2p/", 1)[-1]
            if "/p2p/" not in addr or peer == self.peer_id:
                continue
            if peer not in self.other_gateways:  # one address per gateway: the first heard
                new = True
                log.info("learned of gateway %s at %s", peer, addr)
                self.other_gateways[peer] = addr
        if new:
            update = encode(
                pb.GatewayControl(
                    welcome=pb.Welcome(
                        accepted=True,
                        gateway_peer_id=self.host.get_id().to_bytes(),
                        gateways=sorted(self.other_gateways.values()),
                    )
                )
            )
            for _node_peer, stream in list(self._node_streams.items()):
                trio.lowlevel.spawn_system_task(_send_quietly, stream, update)

    async def handle_peering(self, stream: INetStream) -> None:
        peer = str(peer_of(stream))
        reader = FrameReader(stream, max_frame=_CONTROL_MAX_FRAME)
        with trio.fail_after(_HELLO_TIMEOUT):
            info = await reader.read_frame(pb.Welcome)
        if info is None:
            return
        self._merge(info, peer)
        await stream.write(encode(self._info()))
        await stream.close()

    async def peering_loop(self, bootstrap: list[str], *, interval: float = 5.0) -> None:
        """Keep exchanging gateway lists with the bootstrap gateways and every gateway learned."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        from tooti.p2p import protocols

        while True:
            targets = {a.rsplit("/p2p/", 1)[-1]: a for a in bootstrap}
            targets.update(self.other_gateways)
            for peer, addr in targets.items():
                if peer == self.peer_id:
                    continue
                try:
                    with trio.fail_after(5):
                        info = info_from_p2p_addr(Multiaddr(addr))
                        await self.host.connect(info)
                        stream = await self.host.new_stream(info.peer_id, [protocols.PEERING])
                        try:
                            await stream.write(encode(self._info()))
                            reply = await FrameReader(stream, max_frame=_CONTROL_MAX_FRAME).read_frame(
                                pb.Welcome
                            )
                        finally:
                            await reset_quietly(stream)
                    if reply is not None:
                        self.other_gateways.setdefault(peer, addr)
                        self._merge(reply, peer)
                except Exception as exc:  # noqa: BLE001 - a gateway may be down; try again later
                    log.debug("peering with %s failed: %s", peer, exc)
            await trio.sleep(interval)

    async def rtt_loop(self, *, interval: float = 5.0) -> None:
        """Measure the round trip to every joined node with libp2p ping on one kept stream per
        node (a new stream per probe would cost more than the probe). The RTT is the minimum of
        the last five samples: a busy or briefly frozen node answers late, and that is queueing,
        not distance (load and liveness are judged elsewhere)."""
        streams: dict[str, INetStream] = {}
        self._rtt_samples: dict[str, collections.deque[float]] = {}
        while True:
            async with trio.open_nursery() as nursery:
                for peer in list(self._node_streams):
                    nursery.start_soon(self._probe_rtt, peer, streams)
            for gone in set(streams) - set(self._node_streams):
                await reset_quietly(streams.pop(gone))
                self._rtt_samples.pop(gone, None)
            await trio.sleep(interval)

    async def _probe_rtt(self, peer: str, streams: dict[str, INetStream]) -> None:
        payload = os.urandom(32)
        try:
            with trio.fail_after(1):
                stream = streams.get(peer)
                if stream is None:
                    stream = streams[peer] = await self.host.new_stream(ID.from_base58(peer), [_PING])
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
        entry = self.registry.get(peer)
        if entry is not None:
            entry.rtt_ms = min(samples)

    async def expire_loop(self) -> None:
        """Log nodes that went silent; the registry itself ignores them past the TTL."""
        silent: set[str] = set()
        while True:
            await trio.sleep(min(1.0, self.registry.ttl / 4))
            now = time.monotonic()
            for e in list(self.registry.all()):
                if now - e.last_seen > self.registry.ttl:
                    if e.peer_id not in silent:
                        silent.add(e.peer_id)
                        log.warning(
                            "node %s missed heartbeats for %.1fs: not routable", e.peer_id, now - e.last_seen
                        )
                elif e.peer_id in silent:
                    silent.discard(e.peer_id)
                    log.info("node %s is back", e.peer_id)


async def _send_quietly(stream: INetStream, data: bytes) -> None:
    try:
        with trio.move_on_after(5):
            await stream.write(data)
    except Exception:  # noqa: BLE001 - the node's session notices a broken stream itself
        pass


def _peer_bytes(peer: str) -> bytes:
    return ID.from_base58(peer).to_bytes()
