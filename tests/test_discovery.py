"""Discovery: heartbeats relayed gateway to gateway, forgeries rejected, gateway
announcements, DHT providers. Several real hosts on 127.0.0.1 in one trio run.

Topology (the ``net`` fixture)::

    node (no listen address) --> gateway1 <-- gateway2

Gossip delivery is best-effort until the mesh has formed (gossipsub heartbeat: 1 s), so
senders repeat, as the product does at 1 Hz, and receivers wait on a trio.Event with a
deadline. Repeats are pacing, never synchronisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from tooti.p2p import _dht, _pubsub
from tooti.p2p.discovery import Discovery
from tooti.p2p.host import build_host
from tooti.p2p.protocols import GATEWAYS_TOPIC, HEARTBEAT_TOPIC
from tooti.wire import pb

LOCAL = Multiaddr("/ip4/127.0.0.1/tcp/0")
DEADLINE = 15.0  # generous for a loaded CI box; a healthy run takes ~1-2 s
PACE = 0.2


@dataclass
class Peer:
    host: IHost
    disc: Discovery

    @property
    def id(self) -> ID:
        return self.host.get_id()

    @property
    def info(self) -> PeerInfo:
        return info_from_p2p_addr(self.host.get_addrs()[0])


@asynccontextmanager
async def _host(listen: bool) -> AsyncIterator[IHost]:
    host = build_host(create_new_key_pair())
    async with host.run(listen_addrs=[LOCAL] if listen else []):
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await host.close()  # leaving host.run() alone leaks the connections


@asynccontextmanager
async def _peer(role: str, *, listen: bool) -> AsyncIterator[Peer]:
    async with _host(listen) as host:
        disc = Discovery(host, role=role)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(disc.run)
            yield Peer(host, disc)
            nursery.cancel_scope.cancel()


@dataclass
class Net:
    gw1: Peer
    gw2: Peer
    node: Peer


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    async with AsyncExitStack() as stack:
        gw1 = await stack.enter_async_context(_peer("gateway", listen=True))
        gw2 = await stack.enter_async_context(_peer("gateway", listen=True))
        node = await stack.enter_async_context(_peer("node", listen=False))
        await gw2.host.connect(gw1.info)
        await node.host.connect(gw1.info)
        yield Net(gw1, gw2, node)


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    """Bounded wait for a condition that no event signals (e.g. a counter)."""
    with trio.move_on_after(DEADLINE):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"timed out waiting for {what}"


async def _repeat_until(done: trio.Event, send: Callable[[], object]) -> None:
    """Call the async ``send`` every PACE s until ``done`` is set, at most DEADLINE s."""
    with trio.move_on_after(DEADLINE):
        while not done.is_set():
            await send()  # type: ignore[misc]
            with trio.move_on_after(PACE):
                await done.wait()
    assert done.is_set(), "timed out"


def _announcement(name: str, seq: int = 0, peer_id: bytes = b"") -> pb.Announcement:
    return pb.Announcement(
        peer_id=peer_id, name=name, seq=seq, capacity=4, models=[pb.ModelInfo(name="smollm2", capacity=4)]
    )


async def _send_heartbeats_until(net: Net, done: trio.Event) -> None:
    seq = 0

    async def beat() -> None:
        nonlocal seq
        seq += 1
        await net.node.disc.publish_heartbeat(_announcement("node-a", seq))

    await _repeat_until(done, beat)


async def test_heartbeat_relayed_to_second_gateway_with_verified_sender(net: Net) -> None:
    got: list[tuple[str, pb.Announcement]] = []
    arrived = trio.Event()

    def on_heartbeat(sender: str, ann: pb.Announcement) -> None:
        got.append((sender, ann))
        if len(got) >= 5:  # several, so the pending-queue check below means something
            arrived.set()

    net.gw2.disc.on_heartbeat(on_heartbeat)
    # A second, silent node on gateway1: for each heartbeat it relays, gateway1 queues a
    # copy for every connected peer not subscribed to heartbeats (node2 here).
    async with _peer("node", listen=False) as node2:
        await node2.host.connect(net.gw1.info)
        await _eventually(lambda: node2.id in net.gw1.disc._pubsub.peers, "pubsub stream to node2")
        await _send_heartbeats_until(net, arrived)
        # That queue must stay at one entry, or CPU per heartbeat grows with nodes x
        # queue length (see _pubsub.new_gossipsub).
        pending = net.gw1.disc._router._pending_messages
        assert max(map(len, pending.values()), default=0) <= 1

    sender, ann = got[0]
    assert {s for s, _ in got} == {net.node.id.to_base58()}
    assert ann.peer_id == net.node.id.to_bytes()  # filled in by publish_heartbeat
    assert ann.name == "node-a" and ann.models[0].name == "smollm2"
    assert net.gw1.disc.rejected == net.gw2.disc.rejected == 0


@asynccontextmanager
async def _forger(target: Peer) -> AsyncIterator[tuple[object, ID]]:
    """A peer running gossipsub WITHOUT tooti's validators: it can publish anything,
    signed with its own key. Connected to ``target`` only."""
    async with _host(listen=False) as host:
        router, pubsub = _pubsub.new_gossipsub(host, rate_limit=1000.0)
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            await host.connect(target.info)
            await pubsub.wait_for_subscription(target.id, HEARTBEAT_TOPIC, timeout=DEADLINE)
            await pubsub.wait_for_subscription(target.id, GATEWAYS_TOPIC, timeout=DEADLINE)
            yield pubsub, host.get_id()


async def test_forged_and_malformed_messages_are_rejected_and_not_delivered(net: Net) -> None:
    seen: list[tuple[str, str, bytes]] = []
    gateways_seen: list[str] = []
    for gw in (net.gw1, net.gw2):
        gw.disc.on_heartbeat(lambda s, a: seen.append((s, a.name, a.peer_id)))
        gw.disc.on_gateway(lambda g, addrs: gateways_seen.append(g))

    async with _forger(net.gw1) as (pubsub, _):
        # Claims to be the node, signed by the forger's own key.
        await pubsub.publish(
            HEARTBEAT_TOPIC, _announcement("forged", peer_id=net.node.id.to_bytes()).SerializeToString()
        )
        await _eventually(lambda: net.gw1.disc.rejected >= 1, "forged heartbeat rejected")
        await pubsub.publish(HEARTBEAT_TOPIC, b"\xff\xff not a protobuf")
        await _eventually(lambda: net.gw1.disc.rejected >= 2, "malformed heartbeat rejected")
        # A gateway announcement in gateway2's name, pointing at the forger's address.
        forged = pb.Welcome(
            gateway_peer_id=net.gw2.id.to_bytes(), gateways=[f"/ip4/127.0.0.1/tcp/1/p2p/{net.gw2.id}"]
        )
        await pubsub.publish(GATEWAYS_TOPIC, forged.SerializeToString())
        await _eventually(lambda: net.gw1.disc.rejected >= 3, "forged gateway announcement rejected")

    # Sentinel: a genuine heartbeat, sent after the forgeries along the same path, reaches
    # gateway2. Had gateway1 forwarded a forgery, it would have arrived first.
    arrived = trio.Event()
    net.gw2.disc.on_heartbeat(lambda s, a: arrived.set())
    await _repeat_until(arrived, lambda: net.node.disc.publish_heartbeat(_announcement("real")))

    assert all(name != "forged" for _, name, _ in seen), seen
    assert all(sender == ID(peer).to_base58() for sender, _, peer in seen)
    assert gateways_seen == []
    assert net.gw1.disc.rejected == 3
    assert net.gw2.disc.rejected == 0  # stopped at the first hop: never forwarded


async def test_gateway_announcement_reaches_node_through_other_gateway(net: Net) -> None:
    got: dict[str, list[str]] = {}
    arrived = trio.Event()

    def on_gateway(gateway: str, addrs: list[str]) -> None:
        got[gateway] = addrs
        arrived.set()

    net.node.disc.on_gateway(on_gateway)
    bare = [str(a) for a in net.gw2.host.get_transport_addrs()]  # without /p2p/: appended
    await _repeat_until(arrived, lambda: net.gw2.disc.publish_gateway(bare))
    assert got == {net.gw2.id.to_base58(): [f"{a}/p2p/{net.gw2.id}" for a in bare]}
    # The node can dial what it was told.
    info = info_from_p2p_addr(Multiaddr(got[net.gw2.id.to_base58()][0]))
    await net.node.host.connect(info)
    assert net.gw2.id in net.node.host.get_connected_peers()


async def test_dht_provider_found_by_other_gateway_and_by_node(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    await net.gw2.disc.add_peer(net.gw1.id)
    await net.node.disc.add_peer(net.gw1.id)
    await net.gw1.disc.provide_models(["smollm2"])

    async def found_by(peer: Peer) -> list[PeerInfo]:
        with trio.move_on_after(DEADLINE):
            while True:
                providers = await peer.disc.find_providers("smollm2")
                if any(p.peer_id == net.gw1.id for p in providers):
                    return providers
                await trio.sleep(0.05)  # pacing between lookups, bounded by the deadline
        raise AssertionError(f"{peer.id} never found gateway1 as a provider")

    for finder in (net.gw2, net.node):
        providers = await found_by(finder)
        ids = [p.peer_id for p in providers]
        assert len(ids) == len(set(ids))  # deduplicated
        gw1 = next(p for p in providers if p.peer_id == net.gw1.id)
        assert set(map(str, net.gw1.host.get_transport_addrs())) <= {
            str(a).split("/p2p/")[0] for a in gw1.addrs
        }

    # A node without a listen address does not provide (nobody could dial the record).
    await net.node.disc.provide_models(["only-on-node"])
    assert await net.gw2.disc.find_providers("only-on-node", timeout=1.0) == []
    # Lookups never tried the DHT protocol on the node (a DHT client): see _dht.new_dht.
    assert not [r for r in caplog.records if "not supported" in r.getMessage()]


async def test_publish_arguments_are_checked(net: Net) -> None:
    with pytest.raises(ValueError):
        await net.node.disc.publish_heartbeat(_announcement("x", peer_id=net.gw1.id.to_bytes()))
    with pytest.raises(ValueError):
        await net.gw2.disc.publish_gateway([f"/ip4/127.0.0.1/tcp/1/p2p/{net.gw1.id}"])
    with pytest.raises(ValueError):
        await net.gw2.disc.publish_gateway([])
    assert net.node.disc.rejected == 0  # refused before publishing, not by the validator


async def test_not_running_and_cancellation() -> None:
    async with _host(listen=True) as host:
        disc = Discovery(host, role="gateway")
        with pytest.raises(RuntimeError):
            await disc.find_providers("smollm2")
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                await nursery.start(disc.run)
                nursery.cancel_scope.cancel()  # must unwind pubsub, gossipsub and DHT
        with pytest.raises(RuntimeError):
            await disc.publish_gateway([str(a) for a in host.get_addrs()])
        with pytest.raises(RuntimeError):
            await disc.run()  # services cannot restart


def test_model_key_and_dedupe() -> None:
    digest = hashlib.sha256(b"tooti/model/smollm2").hexdigest()
    assert _dht.model_key("smollm2") == "1220" + digest
    pid = ID.from_pubkey(create_new_key_pair().public_key)
    a, b = Multiaddr("/ip4/10.0.0.1/tcp/1"), Multiaddr("/ip4/10.0.0.2/tcp/1")
    out = _dht.dedupe([PeerInfo(pid, [a]), PeerInfo(pid, [a, b])])
    assert len(out) == 1 and out[0].addrs == [a, b]


async def test_node_finds_every_gateway_in_the_dht(net: Net) -> None:
    """A node that knows one gateway finds the others through the DHT's gateways key."""
    await net.gw1.disc.add_peer(net.gw2.id)
    await net.gw2.disc.add_peer(net.gw1.id)
    await net.gw1.disc.provide_gateway()
    await net.gw2.disc.provide_gateway()
    await net.node.disc.add_peer(net.gw1.id)
    found: list[PeerInfo] = []
    with trio.move_on_after(DEADLINE):
        while {p.peer_id for p in found} != {net.gw1.id, net.gw2.id}:
            found = await net.node.disc.find_gateways()
            await trio.sleep(PACE)
    assert {p.peer_id for p in found} == {net.gw1.id, net.gw2.id}
    gw2 = next(p for p in found if p.peer_id == net.gw2.id)
    assert gw2.addrs  # dialable: the node can join it
    assert net.gw2.id not in {p.peer_id for p in await net.gw2.disc.find_gateways()}  # never itself
