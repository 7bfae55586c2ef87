"""Discovery among member gateways: signed gateway records on gossip, forgeries stopped at the
first hop, the private DHT's gateways key. Several real hosts on 127.0.0.1 in one trio run.

Topology (the ``net`` fixture)::

    gateway1 <-- gateway2          (both members of a network whose key the test holds)

Gossip delivery is best-effort until the mesh has formed (gossipsub heartbeat: 1 s), so
senders repeat, as the product does, and receivers wait on a trio.Event with a deadline.
Repeats are pacing, never synchronisation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from tooti.p2p import _dht, _pubsub, keys, membership
from tooti.p2p.discovery import Discovery
from tooti.p2p.host import build_host
from tooti.p2p.protocols import GATEWAYS_TOPIC
from tooti.wire import pb

LOCAL = Multiaddr("/ip4/127.0.0.1/tcp/0")
DEADLINE = 15.0  # generous for a loaded CI box; a healthy run takes ~1-2 s
PACE = 0.2
#: The network these gateways belong to; the test is its operator.
NET_KEY = keys.generate(keys.NETWORK_PRIVATE)
TRUST = membership.Trust(membership.network_id(NET_KEY))


@dataclass
class Peer:
    host: IHost
    key_pair: KeyPair
    disc: Discovery

    @property
    def id(self) -> ID:
        return self.host.get_id()

    @property
    def info(self) -> PeerInfo:
        return info_from_p2p_addr(self.host.get_addrs()[0])

    def record(self) -> pb.GatewayRecord:
        """This gateway's record under the test network, addresses as it listens."""
        cert = membership.issue(NET_KEY, self.id, valid_for_s=3600)
        return membership.make_record(self.key_pair, cert, [str(a) for a in self.host.get_addrs()])


@asynccontextmanager
async def _host(key_pair: KeyPair, *, listen: bool) -> AsyncIterator[IHost]:
    host = build_host(key_pair)
    async with host.run(listen_addrs=[LOCAL] if listen else []):
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await host.close()  # leaving host.run() alone leaks the connections


@asynccontextmanager
async def _gateway() -> AsyncIterator[Peer]:
    key_pair = create_new_key_pair()
    async with _host(key_pair, listen=True) as host:
        disc = Discovery(host, check_record=TRUST.check_record)
        async with trio.open_nursery() as nursery:
            await nursery.start(disc.run)
            yield Peer(host, key_pair, disc)
            nursery.cancel_scope.cancel()


@dataclass
class Net:
    gw1: Peer
    gw2: Peer


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    async with AsyncExitStack() as stack:
        gw1 = await stack.enter_async_context(_gateway())
        gw2 = await stack.enter_async_context(_gateway())
        await gw2.host.connect(gw1.info)
        yield Net(gw1, gw2)


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
            await send()
            with trio.move_on_after(PACE):
                await done.wait()
    assert done.is_set(), "timed out"


Delivery = list[tuple[str, bytes]]


def _collect(peer: Peer, into: Delivery, arrived: trio.Event | None = None) -> None:
    def on_gateway(sender: str, rec: pb.GatewayRecord) -> None:
        into.append((sender, rec.SerializeToString()))
        if arrived is not None:
            arrived.set()

    peer.disc.on_gateway(on_gateway)


async def test_gateway_record_delivered_with_verified_sender(net: Net) -> None:
    got: Delivery = []
    arrived = trio.Event()
    _collect(net.gw1, got, arrived)
    rec = net.gw2.record()
    await _repeat_until(arrived, lambda: net.gw2.disc.publish_gateway(rec))
    assert {sender for sender, _ in got} == {net.gw2.id.to_base58()}
    assert got[0][1] == rec.SerializeToString()
    member = TRUST.check_record(pb.GatewayRecord.FromString(got[0][1]))
    assert member.peer_id == net.gw2.id.to_base58()
    # What a gateway is told it can dial: gateway1 reaches gateway2 at the record's address.
    info = info_from_p2p_addr(Multiaddr(member.addrs[0]))
    assert info.peer_id == net.gw2.id
    assert net.gw1.disc.rejected == net.gw2.disc.rejected == 0


@asynccontextmanager
async def _forger(target: Peer) -> AsyncIterator[tuple[Pubsub, KeyPair]]:
    """A peer running gossipsub WITHOUT tooti's validators: it can publish anything, signed
    with its own key. Connected to ``target`` only."""
    key_pair = create_new_key_pair()
    async with _host(key_pair, listen=False) as host:
        router, pubsub = _pubsub.new_gossipsub(host, rate_limit=1000.0)
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            await host.connect(target.info)
            await pubsub.wait_for_subscription(target.id, GATEWAYS_TOPIC, timeout=DEADLINE)
            yield pubsub, key_pair


def _addr_of(peer: ID) -> list[str]:
    return [f"/ip4/127.0.0.1/tcp/1/p2p/{peer}"]


def _padded(data: bytes, size: int) -> bytes:
    """``data`` with an unknown length-delimited field (number 1000) appended, to ``size``
    bytes or more: the message still parses and its signatures still verify."""
    tag = b"\xc2\x3e"  # varint of (1000 << 3) | 2
    n = size - len(data)
    length = bytes([0x80 | (n & 0x7F), n >> 7])  # two-byte varint: 128 <= n < 16384
    return data + tag + length + b"p" * n


async def test_forged_and_malformed_records_are_rejected_and_not_delivered(net: Net) -> None:
    seen1: Delivery = []
    seen2: Delivery = []
    sentinel_arrived = trio.Event()
    _collect(net.gw1, seen1)
    _collect(net.gw2, seen2, sentinel_arrived)

    async with _forger(net.gw1) as (pubsub, kp):
        me = ID.from_pubkey(kp.public_key)
        other_net = keys.generate(keys.NETWORK_PRIVATE)
        valid_cert = membership.issue(NET_KEY, me, valid_for_s=3600)
        expired = membership.issue(
            NET_KEY, me, valid_for_s=60, not_before_ms=membership.now_ms() - 3600 * 1000
        )
        sentinel = membership.make_record(kp, valid_cert, _addr_of(me)).SerializeToString()
        assert len(sentinel) < _pubsub.MAX_RECORD_BYTES
        # (payload, why the check refuses it: None for a payload that does not even parse)
        forgeries: list[tuple[bytes, str | None]] = [
            # 1. Its own record, certified by another network.
            (
                membership.make_record(
                    kp, membership.issue(other_net, me, valid_for_s=3600), _addr_of(me)
                ).SerializeToString(),
                "not signed by this network",
            ),
            # 2. A real member's record (gateway2's), re-published under the forger's key.
            (net.gw2.record().SerializeToString(), "names another peer"),
            # 3. Its own record under this network, but the certificate expired an hour ago.
            (membership.make_record(kp, expired, _addr_of(me)).SerializeToString(), "expired"),
            # 4. Its own valid record, padded past the size limit: only the size is wrong.
            (_padded(sentinel, _pubsub.MAX_RECORD_BYTES + 1), "too large"),
            # 5. Not a protobuf message at all.
            (b"\xff\xff not a protobuf", None),
        ]
        TRUST.check_record(pb.GatewayRecord.FromString(sentinel), peer=me.to_bytes())
        for data, reason in forgeries:  # each crosses exactly the check it is meant to
            if reason is not None:
                with pytest.raises(membership.MembershipError, match=reason):
                    TRUST.check_record(pb.GatewayRecord.FromString(data), peer=me.to_bytes())
        for i, (data, _) in enumerate(forgeries, start=1):
            await pubsub.publish(GATEWAYS_TOPIC, data)
            await _eventually(lambda i=i: net.gw1.disc.rejected >= i, f"forgery {i} rejected")

        # Sentinel: the forger's genuine record, sent after the forgeries along the same path,
        # reaches gateway2 through gateway1. Had gateway1 forwarded a forgery, gateway2 would
        # have counted it first.
        async def send_sentinel() -> None:
            await pubsub.publish(GATEWAYS_TOPIC, sentinel)

        await _repeat_until(sentinel_arrived, send_sentinel)

    assert {s for s, _ in seen1 + seen2} == {me.to_base58()}
    assert {rec for _, rec in seen1 + seen2} == {sentinel}  # no forgery delivered, anywhere
    assert net.gw1.disc.rejected == len(forgeries)
    assert net.gw2.disc.rejected == 0  # stopped at the first hop: never forwarded


async def test_dht_gateways_key_found_by_other_gateway(net: Net) -> None:
    await net.gw1.disc.add_peer(net.gw2.id)
    await net.gw2.disc.add_peer(net.gw1.id)
    await net.gw2.disc.provide_gateway()
    found: list[PeerInfo] = []
    with trio.move_on_after(DEADLINE):
        while net.gw2.id not in {p.peer_id for p in found}:
            found = await net.gw1.disc.find_gateways()
            await trio.sleep(PACE)  # pacing between lookups, bounded by the deadline
    ids = [p.peer_id for p in found]
    assert net.gw2.id in ids, "gateway1 never found gateway2 under the gateways key"
    assert len(ids) == len(set(ids))  # deduplicated
    gw2 = next(p for p in found if p.peer_id == net.gw2.id)
    assert set(map(str, net.gw2.host.get_transport_addrs())) <= {str(a).split("/p2p/")[0] for a in gw2.addrs}
    # Never itself, even though it provides the key.
    assert net.gw2.id not in {p.peer_id for p in await net.gw2.disc.find_gateways(timeout=1.0)}


async def test_not_running_and_cancellation() -> None:
    key_pair = create_new_key_pair()
    async with _host(key_pair, listen=True) as host:
        disc = Discovery(host, check_record=TRUST.check_record)
        with pytest.raises(RuntimeError):
            await disc.find_gateways()
        with pytest.raises(RuntimeError):
            await disc.provide_gateway()
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                await nursery.start(disc.run)
                nursery.cancel_scope.cancel()  # must unwind pubsub, gossipsub and DHT
        cert = membership.issue(NET_KEY, host.get_id(), valid_for_s=60)
        with pytest.raises(RuntimeError):
            await disc.publish_gateway(membership.make_record(key_pair, cert, _addr_of(host.get_id())))
        with pytest.raises(RuntimeError):
            await disc.add_peer(host.get_id())
        with pytest.raises(RuntimeError):
            await disc.run()  # services cannot restart


def test_dedupe() -> None:
    pid = ID.from_pubkey(create_new_key_pair().public_key)
    a, b = Multiaddr("/ip4/10.0.0.1/tcp/1"), Multiaddr("/ip4/10.0.0.2/tcp/1")
    out = _dht.dedupe([PeerInfo(pid, [a]), PeerInfo(pid, [a, b])])
    assert len(out) == 1 and out[0].addrs == [a, b]
