"""Among member gateways: gossipsub for gateway records, and the private Kademlia DHT.

Only gateways run this. Nodes hold a direct control stream to every gateway they joined and
need neither: that keeps heartbeats out of gossip (nobody outside can read them) and keeps
pubsub and DHT, with all the state they let a peer create, closed to everyone but member
gateways (``tooti.p2p.host.harden`` with ``members_only``).

Every received message is validated before it is delivered *or forwarded*: it must parse as
a ``GatewayRecord`` that verifies for this network and names its signature-checked
publisher. Anything else stops at the first honest hop and is counted in ``rejected``.

Usage::

    discovery = Discovery(host, check_record=trust.check_record)
    discovery.on_gateway(peering.on_gossip)
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        ...                       # publish_gateway, add_peer, provide_gateway, find_gateways
        nursery.cancel_scope.cancel()  # stops pubsub, gossipsub and the DHT
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.subscription import TrioSubscriptionAPI
from libp2p.tools.anyio_service import background_trio_service

from tooti.p2p import _dht, _pubsub
from tooti.p2p.host import disable_auto_connector
from tooti.p2p.protocols import GATEWAYS_TOPIC
from tooti.wire import pb

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

__all__ = ["Discovery"]

log = logging.getLogger("tooti.p2p.discovery")

#: Longest a publish waits for a first subscriber of its topic; see ``_await_subscriber``.
SUBSCRIBER_WAIT = 2.0
_SUBSCRIBER_POLL = 0.02

#: Checks a record and the verified publisher's peer id; raises on anything invalid.
RecordCheck = Callable[..., object]
GatewayCallback = Callable[[str, pb.GatewayRecord], None]


class Discovery:
    """Gossipsub + private Kademlia DHT (server mode) for one gateway host.

    Build it before the host connects to anyone (pubsub learns of peers from connection
    events), call :meth:`run` once in a nursery, and use the other coroutines only while
    it runs; they raise ``RuntimeError`` otherwise.
    """

    #: Messages refused by validation, counted once per distinct message.
    rejected: int

    def __init__(self, host: IHost, *, check_record: RecordCheck, rate_limit: float = 100.0) -> None:
        """``check_record(record, peer=publisher_bytes)`` must raise for a record that does
        not verify. ``rate_limit``: messages/s one forwarding peer may send per topic (gateways
        re-announce once a minute each; 100/s leaves room for a large federation)."""
        self.rejected = 0
        self._host = host
        self._me = host.get_id()
        self._me_bytes = self._me.to_bytes()
        self._check = check_record
        self._router, self._pubsub = _pubsub.new_gossipsub(host, rate_limit=rate_limit)
        self._dht = _dht.new_dht(host, server=True)
        self._gateway_callbacks: list[GatewayCallback] = []
        self._started = False
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run pubsub, gossipsub and the DHT until cancelled.

        Reports started (``nursery.start``) once the subscription is in place; from then on
        incoming messages are drained continuously into the callbacks. Cancellation stops
        all three services. Callable once: the services cannot restart.
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
            # The validator goes in before the subscription, so no message is ever delivered
            # or forwarded unchecked.
            validator = _pubsub.counting_validator(self._parse, self._count_reject)
            self._pubsub.set_topic_validator(GATEWAYS_TOPIC, validator, False)
            async with trio.open_nursery() as nursery:
                gateways = await self._pubsub.subscribe(GATEWAYS_TOPIC)
                nursery.start_soon(self._drain, gateways)
                self._running = True
                try:
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    self._running = False

    # -- gossip ------------------------------------------------------------------------

    def on_gateway(self, callback: GatewayCallback) -> None:
        """Call ``callback(publisher_peer_id_base58, record)`` for each valid record.
        Callbacks run in the drain task: keep them quick; one that raises is logged and the
        others still run."""
        self._gateway_callbacks.append(callback)

    async def publish_gateway(self, record: pb.GatewayRecord) -> None:
        """Announce this gateway's own record on the gateways topic. Waits up to
        ``SUBSCRIBER_WAIT`` seconds for a first subscriber."""
        self._check_running()
        await self._await_subscriber(GATEWAYS_TOPIC)
        await self._pubsub.publish(GATEWAYS_TOPIC, record.SerializeToString())

    # -- DHT ---------------------------------------------------------------------------

    async def add_peer(self, peer_id: ID) -> None:
        """Seed the DHT routing table with a connected member gateway (a DHT server)."""
        self._check_running()
        if not await self._dht.add_peer(peer_id):
            log.debug("DHT routing table did not take %s", peer_id)

    async def provide_gateway(self) -> None:
        """Advertise this host under the well-known gateways key."""
        self._check_running()
        try:
            await self._dht.provide(_dht.GATEWAYS_KEY)
        except Exception:
            log.warning("DHT provide of the gateway key failed", exc_info=True)

    async def find_gateways(self, *, timeout: float = 2.0) -> list[PeerInfo]:  # noqa: ASYNC109
        """Candidate gateways from the DHT (with addresses), this host excluded. Candidates
        only: a gateway trusts one after the peering exchange verifies its record."""
        self._check_running()
        found: list[PeerInfo] = []
        with trio.move_on_after(timeout):
            try:
                found = await self._dht.find_providers(_dht.GATEWAYS_KEY)
            except Exception:
                log.warning("DHT lookup for gateways failed", exc_info=True)
        return [p for p in _dht.dedupe(found) if p.peer_id != self._me and p.addrs]

    # -- internals ---------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeError("Discovery.run() is not running")

    def _count_reject(self) -> None:
        self.rejected += 1

    def _parse(self, msg: rpc_pb2.Message) -> pb.GatewayRecord | None:
        rec = _pubsub.parse_record(msg)
        if rec is None:
            return None
        try:
            self._check(rec, peer=msg.from_id)
        except Exception:  # noqa: BLE001 - any failure to verify is a rejection
            return None
        return rec

    async def _await_subscriber(self, topic: str) -> None:
        """Wait, at most SUBSCRIBER_WAIT s, until some peer has told us it subscribes to
        ``topic``. Pubsub offers no event for "any peer subscribed", hence the short poll."""
        if self._pubsub.peer_topics.get(topic):
            return
        with trio.move_on_after(SUBSCRIBER_WAIT):
            while not self._pubsub.peer_topics.get(topic):  # noqa: ASYNC110 - no event exists
                await trio.sleep(_SUBSCRIBER_POLL)

    async def _drain(self, subscription: TrioSubscriptionAPI) -> None:
        # A subscription that is not drained fills up and pubsub drops new messages.
        async for msg in subscription:
            if msg.from_id == self._me_bytes:
                continue  # our own announcement, echoed back by the local subscription
            rec = _pubsub.parse_record(msg)
            if rec is not None:
                _call_each(self._gateway_callbacks, ID(msg.from_id).to_base58(), rec)


def _call_each(callbacks: list[Callable[..., None]], *args: object) -> None:
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:
            log.exception("discovery callback %r failed", callback)


async def _turn_off_auto_connector(host: IHost) -> None:
    """Keep the swarm's auto-connector off (see ``host.disable_auto_connector``), also for a
    host built elsewhere and already running."""
    disable_auto_connector(host)
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        await connector.stop()
