"""Who is out there: gossipsub announcements plus the private Kademlia DHT, for one host.

Nodes publish a signed heartbeat (``pb.Announcement``) every second; gateways hear every
node's heartbeat, relayed gateway to gateway, and announce their own dialable addresses
(``pb.Welcome`` as payload) to everyone. Peers with a listen address also advertise the
models they serve in the DHT.

Every received message is validated before it is delivered *or forwarded*: it must parse,
and the peer id it claims must be its verified, signature-checked publisher. A forged or
malformed message stops at the first honest hop and is counted in ``Discovery.rejected``.

Usage::

    discovery = Discovery(host, role="gateway")
    discovery.on_heartbeat(registry.update)
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        ...                       # connect to peers, add_peer, publish, find_providers
        nursery.cancel_scope.cancel()  # stops pubsub, gossipsub and the DHT
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.subscription import TrioSubscriptionAPI
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from tooti.p2p import _dht, _pubsub
from tooti.p2p.host import disable_auto_connector
from tooti.p2p.protocols import GATEWAYS_TOPIC, HEARTBEAT_TOPIC
from tooti.wire import pb

__all__ = ["Discovery"]

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.p2p.discovery")

#: Longest a publish waits for a first subscriber of its topic; see ``_await_subscriber``.
SUBSCRIBER_WAIT = 2.0
_SUBSCRIBER_POLL = 0.02

HeartbeatCallback = Callable[[str, pb.Announcement], None]
GatewayCallback = Callable[[str, list[str]], None]


class Discovery:
    """Gossipsub + private Kademlia DHT for one host.

    ``role="gateway"``: DHT server; subscribes to heartbeats and gateway announcements.
    ``role="node"``: DHT client (it has no address others could use to reach it);
    subscribes to gateway announcements only and publishes heartbeats through the
    gateways it is connected to.

    Build it before the host connects to anyone (pubsub learns of peers from connection
    events), call :meth:`run` once in a nursery, and use the other coroutines only while
    it runs; they raise ``RuntimeError`` otherwise.
    """

    #: Messages refused by validation (forged sender, unparsable payload), counted
    #: once per distinct message, including our own publishes.
    rejected: int

    def __init__(
        self, host: IHost, *, role: Literal["gateway", "node"], heartbeat_rate_limit: float = 1000.0
    ) -> None:
        """``heartbeat_rate_limit``: messages/s a single forwarding peer may send us per
        topic. It must exceed the network's total heartbeat rate (a gateway relays all
        of them); the default leaves 5x headroom over 200 nodes at 1 Hz."""
        if role not in ("gateway", "node"):
            raise ValueError(f"role must be 'gateway' or 'node', not {role!r}")
        self.rejected = 0
        self._host = host
        self._role = role
        self._me = host.get_id()
        self._me_bytes = self._me.to_bytes()
        self._router, self._pubsub = _pubsub.new_gossipsub(host, rate_limit=heartbeat_rate_limit)
        self._dht = _dht.new_dht(host, server=role == "gateway")
        self._heartbeat_callbacks: list[HeartbeatCallback] = []
        self._gateway_callbacks: list[GatewayCallback] = []
        self._started = False
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run pubsub, gossipsub and the DHT until cancelled.

        Reports started (``nursery.start``) once this host's subscriptions are in place;
        from then on incoming messages are drained continuously into the callbacks.
        Cancellation stops all three services. Callable once: the services cannot restart.
        """
        if self._started:
            raise RuntimeError("Discovery.run() can only be called once")
        self._started = True
        await _turn_off_auto_connector(self._host)
        async with (
            background_trio_service(self._pubsub),
            background_trio_service(self._router),
            background_trio_service(self._dht),
        ):
            await self._pubsub.wait_until_ready()
            # Validators go in before the subscriptions, so no message is ever delivered
            # or forwarded unchecked. Nodes validate too: they forward gateway announcements.
            for topic, parse in (
                (HEARTBEAT_TOPIC, _pubsub.parse_heartbeat),
                (GATEWAYS_TOPIC, _pubsub.parse_gateway),
            ):
                validator = _pubsub.counting_validator(parse, self._count_reject)
                self._pubsub.set_topic_validator(topic, validator, False)
            _pubsub.use_subscription_buffer()
            async with trio.open_nursery() as nursery:
                if self._role == "gateway":
                    heartbeats = await self._pubsub.subscribe(HEARTBEAT_TOPIC)
                    nursery.start_soon(self._drain, heartbeats, self._deliver_heartbeat)
                # Nodes subscribe too: joining the topic's mesh is how announcements reach
                # them, and how they pass them on to the other gateways they know.
                gateways = await self._pubsub.subscribe(GATEWAYS_TOPIC)
                nursery.start_soon(self._drain, gateways, self._deliver_gateway)
                self._running = True
                try:
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    self._running = False

    # -- gossip ------------------------------------------------------------------------

    def on_heartbeat(self, callback: HeartbeatCallback) -> None:
        """Call ``callback(sender_peer_id_base58, announcement)`` for each valid heartbeat.

        The sender is the signature-verified publisher and equals ``announcement.peer_id``.
        Callbacks run in the drain task: keep them quick and non-blocking; one that raises
        is logged and the others still run. Only gateways receive heartbeats.
        """
        self._heartbeat_callbacks.append(callback)

    def on_gateway(self, callback: GatewayCallback) -> None:
        """Call ``callback(gateway_peer_id_base58, addrs)`` for each valid gateway
        announcement from another gateway (every addr ends in ``/p2p/<that gateway>``).
        Same rules as :meth:`on_heartbeat`."""
        self._gateway_callbacks.append(callback)

    async def publish_heartbeat(self, ann: pb.Announcement) -> None:
        """Publish a heartbeat signed by this host.

        ``ann.peer_id`` may be empty (this host's id is filled in, on a copy); any other
        id raises ``ValueError``, since every receiver would reject it. When no peer is
        subscribed to heartbeats yet this waits up to ``SUBSCRIBER_WAIT`` seconds first.
        """
        self._check_running()
        mine = self._me_bytes
        if ann.peer_id and ann.peer_id != mine:
            raise ValueError("announcement.peer_id is not this host's peer id")
        if not ann.peer_id:
            filled = pb.Announcement()
            filled.CopyFrom(ann)
            filled.peer_id = mine
            ann = filled
        await self._publish(HEARTBEAT_TOPIC, ann.SerializeToString())

    async def publish_gateway(self, addrs: list[str]) -> None:
        """Announce this host's dialable multiaddrs on the gateways topic.

        An address without ``/p2p/`` gets this host's id appended; one naming another peer
        raises ``ValueError``, as does an empty list. Waits for a subscriber like
        :meth:`publish_heartbeat`.
        """
        self._check_running()
        full = [_with_own_id(addr, self._me) for addr in addrs]
        if not full:
            raise ValueError("no addresses to announce")
        welcome = pb.Welcome(accepted=True, gateway_peer_id=self._me.to_bytes(), gateways=full)
        await self._publish(GATEWAYS_TOPIC, welcome.SerializeToString())

    # -- DHT ---------------------------------------------------------------------------

    async def add_peer(self, peer_id: ID) -> None:
        """Seed the DHT routing table with a connected gateway (a DHT server).

        Nothing else fills the table here (random walk is off). A peer that identify has
        shown to be a DHT client, or whose addresses are unknown, is left out, with a
        debug log.
        """
        self._check_running()
        if not await self._dht.add_peer(peer_id):
            log.debug("DHT routing table did not take %s", peer_id)

    async def provide_models(self, models: Iterable[str]) -> None:
        """Advertise in the DHT that this host serves each of ``models``.

        A no-op (logged) when the host listens on no address. Network failures are
        logged, not raised: the DHT re-announces provider records on its own schedule.
        """
        self._check_running()
        names = list(models)
        if not names:
            return
        if not self._host.get_transport_addrs():
            # A provider record is (peer id, addresses). DHT servers drop records with no
            # address, and an address-less provider could not be dialled anyway: a node
            # behind NAT is reached over its own outbound connection to a gateway, which
            # learns its models from heartbeats instead.
            log.info("not providing %s in the DHT: this host has no listen address", names)
            return
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(self._provide_one, name)

    async def provide_gateway(self) -> None:
        """Gateways: advertise this host under the well-known gateways key."""
        self._check_running()
        try:
            await self._dht.provide(_dht.GATEWAYS_KEY)
        except Exception:
            log.warning("DHT provide of the gateway key failed", exc_info=True)

    async def find_gateways(self, *, timeout: float = 2.0) -> list[PeerInfo]:  # noqa: ASYNC109
        """Every gateway the DHT knows of (with addresses), this host excluded."""
        self._check_running()
        found: list[PeerInfo] = []
        with trio.move_on_after(timeout):
            try:
                found = await self._dht.find_providers(_dht.GATEWAYS_KEY)
            except Exception:
                log.warning("DHT lookup for gateways failed", exc_info=True)
        return [p for p in _dht.dedupe(found) if p.peer_id != self._me and p.addrs]

    async def find_providers(self, model: str, *, timeout: float = 2.0) -> list[PeerInfo]:  # noqa: ASYNC109
        """Peers advertising ``model`` (possibly including this host), one entry per peer.

        Returns what was found within ``timeout`` seconds, ``[]`` on timeout or error.
        Results come from py-libp2p's local cache first when it has any: a provider that
        appeared after the first lookup may be missing, a departed one still listed; check
        liveness with heartbeats or a dial.
        """
        self._check_running()
        found: list[PeerInfo] = []
        with trio.move_on_after(timeout):
            try:
                found = await self._dht.find_providers(_dht.model_key(model))
            except Exception:
                log.warning("DHT lookup for %r failed", model, exc_info=True)
        return _dht.dedupe(found)

    # -- internals ---------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeError("Discovery.run() is not running")

    def _count_reject(self) -> None:
        self.rejected += 1

    async def _publish(self, topic: str, data: bytes) -> None:
        await self._await_subscriber(topic)
        await self._pubsub.publish(topic, data)

    async def _await_subscriber(self, topic: str) -> None:
        """Wait, at most SUBSCRIBER_WAIT s, until some peer has told us it subscribes to
        ``topic``. Publishing before that sends to nobody: right after connecting, the
        peer's subscription list has not arrived yet. Pubsub offers no event for "any
        peer subscribed", hence the short poll; it costs nothing once a peer is there."""
        if self._pubsub.peer_topics.get(topic):
            return
        with trio.move_on_after(SUBSCRIBER_WAIT):
            while not self._pubsub.peer_topics.get(topic):  # noqa: ASYNC110 - no event exists
                await trio.sleep(_SUBSCRIBER_POLL)
        if not self._pubsub.peer_topics.get(topic):
            log.debug("publishing on %s with no subscriber known yet", topic)

    async def _drain(
        self, subscription: TrioSubscriptionAPI, deliver: Callable[[rpc_pb2.Message], None]
    ) -> None:
        # A subscription that is not drained fills up and pubsub drops new messages.
        async for msg in subscription:
            if msg.from_id == self._me_bytes:
                continue  # our own announcement, echoed back by the local subscription
            deliver(msg)

    def _deliver_heartbeat(self, msg: rpc_pb2.Message) -> None:
        ann = _pubsub.parse_heartbeat(msg)  # validated already; parsed again to get the value
        if ann is not None:
            _call_each(self._heartbeat_callbacks, ID(msg.from_id).to_base58(), ann)

    def _deliver_gateway(self, msg: rpc_pb2.Message) -> None:
        addrs = _pubsub.parse_gateway(msg)
        if addrs is not None:
            _call_each(self._gateway_callbacks, ID(msg.from_id).to_base58(), addrs)

    async def _provide_one(self, name: str) -> None:
        try:
            reached = await self._dht.provide(_dht.model_key(name))
        except Exception:
            log.warning("DHT provide for %r failed", name, exc_info=True)
            return
        # False only means no other DHT server took the record yet (e.g. the first
        # gateway); it is stored locally and answered from here.
        log.debug("provided %r in the DHT (reached other servers: %s)", name, reached)


def _call_each(callbacks: list[Callable[..., None]], *args: object) -> None:
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:
            log.exception("discovery callback %r failed", callback)


def _with_own_id(addr: str, me: ID) -> str:
    maddr = Multiaddr(addr)
    peer = maddr.get_peer_id()
    if peer is None:
        return str(maddr.encapsulate(Multiaddr(f"/p2p/{me}")))
    if peer != str(me):
        raise ValueError(f"{addr} names another peer")
    return str(maddr)


async def _turn_off_auto_connector(host: IHost) -> None:
    """Keep the swarm's auto-connector off (see ``host.disable_auto_connector``), also for a
    host built elsewhere and already running."""
    disable_auto_connector(host)
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        await connector.stop()
