"""Gossipsub as tooti needs it: tuned parameters and the payload validators.

Internal to :mod:`tooti.p2p.discovery`. Every message on a tooti topic is signed by its
publisher (``strict_signing``), so ``msg.from_id`` is the verified origin even after
forwarding; the validators here only have to check that the payload parses and that the
peer id it *claims* is that verified origin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from tooti.wire import pb

log = logging.getLogger("tooti.p2p.discovery")

# A topic validator: (neighbour that handed the message over, message) -> accept?
Validator = Callable[[ID, rpc_pb2.Message], bool]


def new_gossipsub(host: IHost, *, rate_limit: float) -> tuple[GossipSub, Pubsub]:
    """A GossipSub router and the Pubsub service around it, both not yet running.

    ``rate_limit`` is the spam limit in messages per second per forwarding peer per
    topic; see the comment at the argument.
    """
    router = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        # Mesh size per topic. Gateways are few; D=6 reaches every gateway of a small
        # federation directly and keeps ~log(n) hops for a large one.
        degree=6,
        degree_low=4,  # graft back up when two mesh links are lost, not after each one
        degree_high=12,  # prune only well above D, so churn of nodes does not thrash the mesh
        heartbeat_initial_delay=0.1,  # form the first mesh right after start-up
        # Mesh repair, fanout refresh and IHAVE gossip run on this clock. The default
        # 120 s would leave a new gateway outside the mesh (dropping relayed
        # heartbeats) for minutes.
        heartbeat_interval=1,
        time_to_live=60,  # a node's fanout to its gateways survives a minute of silence
        gossip_window=3,  # IHAVE advertises the last 3 s: a missed heartbeat is recoverable
        gossip_history=5,  # message cache keeps 5 s, enough to answer IWANT for that window
        # Checked per *forwarding* peer per topic per second, also on our own publishes
        # and on every relayed message: a gateway relays the heartbeat of every node, so
        # the limit must exceed the whole network's rate (200 nodes x 1/s = 200/s) or
        # multi-hop delivery silently stops. The default is 10.
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=rate_limit,
        adaptive_gossip_enabled=False,  # keep degree/heartbeat as configured above
        do_px=False,  # peers are found through gateways' announcements, not PRUNE exchange
        # Every forwarded message is queued "optimistically" for each connected peer not
        # subscribed to its topic - for a gateway, every node, since nodes do not
        # subscribe to heartbeats - and each queue is re-filtered on every append: CPU per
        # heartbeat grew with nodes x queue length (13 ms at 100 nodes). A TTL of 0 expires
        # each entry at the next append, so queues stay at one entry and never flush.
        # Nothing is lost: publishers wait for a subscriber before publishing.
        max_pending_messages_per_peer=4,
        pending_messages_ttl=0.0,
    )
    service = Pubsub(
        host,
        router,
        # Sign every publish and drop unsigned or mis-signed messages before validation:
        # this is what makes msg.from_id trustworthy.
        strict_signing=True,
        # Message ids are remembered this long so forwarding loops stop. It must outlast
        # the gossip history (5 s) plus path delay; 30 s x 200 msg/s = 6k small entries.
        seen_ttl=30,
        sweep_interval=10,  # sweep those often so the seen set stays near 6k entries
        # This cache only matters for *rejected* repeats (accepted ones are stopped by the
        # seen set first) and its LRU is a Python list scanned on every put, so small.
        validation_cache_size=256,
    )
    return router, service


#: Largest gossip payload accepted: one gateway record.
MAX_RECORD_BYTES = 4096


def parse_record(msg: rpc_pb2.Message) -> pb.GatewayRecord | None:
    """The GatewayRecord in ``msg`` if it is small and parses, else None (not yet verified)."""
    if len(msg.data) > MAX_RECORD_BYTES:
        return None
    try:
        return pb.GatewayRecord.FromString(msg.data)
    except DecodeError:
        return None


def counting_validator(
    parse: Callable[[rpc_pb2.Message], object | None], on_reject: Callable[[], None]
) -> Validator:
    """A sync topic validator accepting messages that ``parse`` turns into a value.

    Pubsub calls it before delivering or forwarding a message (and on our own publishes).
    It must not raise: an exception escaping a validator propagates into pubsub's read
    loop for that peer, so anything unexpected counts as a rejection.
    """

    def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
        try:
            ok = parse(msg) is not None
        except Exception:
            log.warning("validator failed on a message from %s", _safe_id(msg), exc_info=True)
            ok = False
        if not ok:
            on_reject()
            log.debug("rejected message on %s from %s via %s", list(msg.topicIDs), _safe_id(msg), forwarder)
        return ok

    return validate


def _safe_id(msg: rpc_pb2.Message) -> str:
    try:
        return ID(msg.from_id).to_base58()
    except Exception:  # noqa: BLE001 - for logs only
        return "?"
