"""Shared building blocks for the libp2p spikes (py-libp2p 0.8.1).

Reference only: every construct here was run on 127.0.0.1 by the spike scripts
(gossip_dht.py, gossip_cpu.py). Comments name the trap from
/work/shared/notes/libp2p.md that each setting addresses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import libp2p  # noqa: F401  (import sets up libp2p's own logging; trap 10)
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.identity_utils import identity_exists, load_identity, save_identity
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

HEARTBEAT_TOPIC = "/tooti/v1/heartbeat"
GATEWAYS_TOPIC = "/tooti/v1/gateways"  # gateways announce their dialable addrs here
ECHO_PROTOCOL = "/tooti/v1/echo"  # stand-in for the inference stream protocol

log = logging.getLogger("spike")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lp = logging.getLogger("libp2p")
    lp.propagate = True  # trap 10: `import libp2p` sets propagate=False
    # libp2p is very chatty (spurious "Failed to read DHT message", teardown noise).
    lp.setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def model_key(name: str) -> str:
    """DHT provider key: multihash hex (0x12 sha2-256, 0x20 length) of a sha256 (trap 9)."""
    return "1220" + hashlib.sha256(f"tooti/v1/model/{name}".encode()).hexdigest()


def load_or_create_identity(path: Path) -> KeyPair:
    """Persistent Ed25519 identity (protobuf private-key format, file mode 0600)."""
    if identity_exists(path):
        return load_identity(path)
    kp = create_new_key_pair()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_identity(kp, path)
    return kp


def make_host(key_pair: KeyPair, *, is_node: bool = False) -> IHost:
    """The one host constructor everything should use.

    - sec_opt: Noise ONLY. The default dict also offers /plaintext/2.0.0 (trap 1: peer-id
      impersonation), secio and TLS. Noise needs its own X25519 static key; the identity
      key (Ed25519) signs it inside the handshake, so the peer id is authenticated.
    - muxer_opt: yamux only (no mplex fallback).
    - ConnectionConfig(max_connections_per_peer=1): swarm.dial_peer cancels the
      happy-eyeballs wait as soon as len(connections) >= max_connections_per_peer, so a
      dial no longer waits out the 250 ms _HAPPY_EYEBALLS_DELAY (trap 3). Measured below.
      min_connections=0 / low_watermark=0 only stops the "critical" 10 s poll; the
      auto-connector itself is switched off by disable_auto_connector() (trap 11).
    - disable_identify_address_discovery: a node behind NAT must not advertise the
      ephemeral source port gateways observe via identify (it is not listening there).
    """
    sec_opt = {
        NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    }
    host = new_host(
        key_pair=key_pair,
        sec_opt=sec_opt,
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        connection_config=ConnectionConfig(
            max_connections_per_peer=1, min_connections=0, low_watermark=0, high_watermark=300
        ),
        disable_identify_address_discovery=is_node,
    )
    disable_auto_connector(host)
    return host


def disable_auto_connector(host: IHost) -> None:
    """Trap 11: Swarm.run() awaits auto_connector.start(), which sets _started=True; the
    periodic task and the on-disconnect redial (Swarm._schedule_auto_connect ->
    maybe_connect) both return early while _started is False. No config knob does
    this: target = (low+high)/2 and high==low==0 would make the pruner close all."""
    ac = host.get_network().auto_connector  # type: ignore[attr-defined]

    async def _never_start() -> None:
        ac._started = False

    ac.start = _never_start


def gossipsub_and_pubsub(host: IHost, *, rate_limit: float = 1000.0) -> tuple[GossipSub, Pubsub]:
    """Gossipsub tuned for 1 Hz heartbeats (trap 7). Run both with
    background_trio_service(pubsub) then background_trio_service(gossipsub)."""
    gossipsub = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        degree=6,  # D: mesh size per topic (gateways form the mesh; nodes only publish)
        degree_low=4,
        degree_high=12,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=1,  # default 120 s: mesh/fanout repair would take minutes
        time_to_live=60,  # fanout TTL for topics we publish to without subscribing
        gossip_window=3,
        gossip_history=5,
        # Per *forwarding* peer per topic per second, checked in GossipSub.publish i.e.
        # when forwarding (also our own publishes, forwarder == self). A gateway relays
        # every node's heartbeat, so this must exceed the total heartbeat rate of the
        # network or multi-hop delivery silently stops. Default 10.
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=rate_limit,
        adaptive_gossip_enabled=False,  # keep degree/heartbeat as configured
        do_px=False,
    )
    # strict_signing=True (default): publish() signs with the host key; push_msg() drops
    # unsigned messages and ones whose key does not hash to msg.from_id, before any
    # validator runs. So msg.from_id is the verified original publisher, also after
    # forwarding through another gateway.
    pubsub = Pubsub(host, gossipsub, strict_signing=True, seen_ttl=120)
    return gossipsub, pubsub


def set_subscription_buffer(size: int = 4096) -> None:
    """Trap 7: subscribe() reads the module global SUBSCRIPTION_CHANNEL_SIZE (32) when it
    creates the channel; overflowing messages are dropped with a warning. Call this
    before pubsub.subscribe() and still drain the subscription continuously."""
    pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = size


# -- heartbeat payload: JSON stand-in for the protobuf the product will define ---------
def encode_heartbeat(peer_id: ID, seq: int, t_start: float, models: list[str]) -> bytes:
    return json.dumps(
        {
            "peer_id": peer_id.to_base58(),
            "seq": seq,
            "t_start": t_start,
            "t_sent": time.time(),
            "models": models,
        }
    ).encode()


def heartbeat_validator(forwarder: ID, msg: rpc_pb2.Message) -> bool:
    """Sync topic validator: pubsub.set_topic_validator(HEARTBEAT_TOPIC, this, False).
    Called as validator(msg_forwarder, msg) after the signature check; False drops the
    message (not delivered, not forwarded; result cached per msg id). `forwarder` is the
    neighbour that handed it over, msg.from_id the signed origin."""
    try:
        claimed = json.loads(msg.data)["peer_id"]
    except (ValueError, KeyError, TypeError):
        return False
    return claimed == ID(msg.from_id).to_base58()


async def drain(subscription, handle) -> None:
    """Drain a subscription forever; one bad message must not kill the loop (trap 2)."""
    while True:
        msg = await subscription.get()  # TrioSubscriptionAPI: get() / async for
        try:
            handle(msg)
        except Exception:
            log.exception("heartbeat handler failed")


class ConnWatcher(INotifee):
    """Connection open/close events: host.get_network().register_notifee(ConnWatcher(..)).

    All six INotifee methods are abstract and async. The swarm runs every notifee method
    in its own task and logs (does not propagate) exceptions, but it awaits them all, so
    keep them non-blocking. disconnected() fires per *connection*: check that no other
    connection to that peer remains before evicting it.
    """

    def __init__(self, name: str, on_up=None, on_down=None) -> None:
        self.name, self.on_up, self.on_down = name, on_up, on_down

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self.on_up:
            self.on_up(peer, conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if not network.get_connections(peer) and self.on_down:  # last connection gone
            self.on_down(peer, conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        pass


def MS(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


async def echo_handler(stream) -> None:
    # Trap 2: an exception escaping a handler kills the host -> always a boundary.
    try:
        data = await stream.read(1024)
        await stream.write(b"echo:" + data)
        await stream.close()
    except Exception:
        await stream.reset()


async def echo(host, peer: ID) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    s = await host.new_stream(peer, [ECHO_PROTOCOL])
    await s.write(b"hi")
    reply = await s.read(1024)
    await s.close()
    return reply, MS(t0)


def conns(host, peer: ID) -> list:
    return [
        (c.direction.name, c.get_connection_type().name, [str(a) for a in c.get_transport_addresses()])
        for c in host.get_network().get_connections(peer)
    ]


# -- tiny file rendezvous between the spike processes ---------------------------------
def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


async def wait_json(path: Path, timeout: float = 15.0):
    with trio.fail_after(timeout):
        while not path.exists():
            await trio.sleep(0.02)
    return json.loads(path.read_text())


def result(role: str, **kw) -> None:
    """One machine-readable line per measurement; the orchestrator greps 'RESULT '."""
    print("RESULT " + json.dumps({"role": role, **kw}), flush=True)
