"""A network only its members can join: attacker peers against real gateway and node processes.

Each test runs real ``tooti gateway`` / ``tooti node`` processes and, in the test process, a
libp2p host playing the attacker: an impostor gateway (no certificate, or another network's),
a member gateway gone rogue (it holds a valid certificate), or a peer posing as a node.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import httpx
import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from harness import procs as _procs
from tests._attack import FakeGateway, member_key, try_inference
from tooti.p2p import keys, membership, protocols
from tooti.p2p.framing import FrameReader, encode
from tooti.p2p.host import build_host
from tooti.p2p.identity import load_or_create
from tooti.wire import pb

NS_KEY = keys.generate(keys.NAMESPACE_PRIVATE)
CHAT = {"model": "loopback", "messages": [{"role": "user", "content": "hello"}]}


async def _start_gateway(tmp: Path, name: str = "gw", **kw: object) -> _procs.Gateway:
    return await trio.to_thread.run_sync(lambda: _procs.start_gateway(tmp, name, **kw))  # type: ignore[arg-type]


async def _start_node(tmp: Path, name: str, gateways: list[_procs.Gateway], **kw: object) -> _procs.Node:
    return await trio.to_thread.run_sync(
        lambda: _procs.start_node(tmp, name, gateways=gateways, backend={"type": "loopback"}, **kw)  # type: ignore[arg-type]
    )


async def _stop(*procs: _procs.Proc) -> None:
    for p in procs:
        await trio.to_thread.run_sync(p.stop)


async def _chat_ok(gw: _procs.Gateway) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        with trio.fail_after(20):
            while True:
                r = await client.post(gw.base_url + "/chat/completions", json=CHAT)
                if r.status_code == 200:
                    return
                await trio.sleep(0.2)  # the node may still be joining


async def _node_on(gw: _procs.Gateway, peer: str, *, timeout: float = 20) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(timeout):
            while peer not in {
                n["peer_id"] for n in (await client.get(gw.base_url + "/network/nodes")).json()["data"]
            }:
                await trio.sleep(0.1)


@pytest.mark.parametrize("cert", ["none", "other-network"])
async def test_node_never_proves_to_or_serves_an_impostor(tmp_path: Path, cert: str) -> None:
    gw = await _start_gateway(tmp_path)
    other = keys.generate(keys.NETWORK_PRIVATE) if cert == "other-network" else None
    fake = FakeGateway(tmp_path, "impostor", network_key=other)
    async with fake.running():
        node = await _start_node(
            tmp_path, "n", [fake.gateway, gw], node={"namespace": "acme", "namespace_key": NS_KEY}
        )
        try:
            await _chat_ok(gw)
            with trio.fail_after(20):
                while not fake.seen.hellos:  # the node did dial it (it is configured)...
                    await trio.sleep(0.05)
            assert fake.seen.proofs == []  # ...but proved nothing to it
            assert not fake.seen.joined.is_set()
            assert not await try_inference(fake.host, ID.from_base58(node.peer_id))
            assert node.proc.popen.poll() is None
            assert "not a gateway of this network" in node.proc.log.read_text()
        finally:
            await _stop(node.proc, gw.proc)


async def test_rogue_peer_cannot_become_a_gateway(tmp_path: Path) -> None:
    """An outsider offers itself through peering (with its own record, a flood of bogus ones
    and an oversized list), gossip and the DHT: no node ever dials it. A real second gateway
    learned the same way is joined by the node: the propagation path did run."""
    gw = await _start_gateway(tmp_path)
    node = await _start_node(tmp_path, "n", [gw])
    rogue = FakeGateway(tmp_path, "rogue", network_key=keys.generate(keys.NETWORK_PRIVATE))
    try:
        async with rogue.running():
            info = info_from_p2p_addr(Multiaddr(gw.p2p))
            await rogue.host.connect(info)
            bogus = [
                membership.make_record(
                    load_or_create(tmp_path / f"b{i}.key"), rogue.certificate, [f"/ip4/10.9.9.{i}/tcp/1"]
                )
                for i in range(3)
            ] * 100
            for gl in (
                pb.GatewayList(records=[rogue.record()]),
                pb.GatewayList(records=[rogue.record(), *bogus]),
                pb.GatewayList(records=[rogue.record()] * 5000),  # ~4 MB: over the frame limit
            ):
                s = await rogue.host.new_stream(info.peer_id, [protocols.PEERING])
                with trio.fail_after(10), pytest.raises(Exception):  # reset: never an answer
                    await s.write(encode(gl))
                    while await s.read(4096):
                        pass
                    raise EOFError

            async def refused(proto: str) -> None:
                s = await rogue.host.new_stream(info.peer_id, [proto])
                with trio.fail_after(15), pytest.raises(Exception):  # reset once admission times out
                    await s.write(b"\x06" + rogue.record().SerializeToString()[:6])
                    while await s.read(4096):
                        pass
                    raise EOFError

            async with trio.open_nursery() as nursery:
                for proto in ("/meshsub/1.1.0", "/meshsub/1.2.0", str(protocols.DHT_PROTOCOL)):
                    nursery.start_soon(refused, proto)
            gw2 = await _start_gateway(tmp_path, "gw2", bootstrap=[gw.p2p])
            try:
                await _node_on(gw2, node.peer_id)
                assert rogue.seen.connections_from == set()
                assert not rogue.host.get_network().get_connections(ID.from_base58(node.peer_id))
                assert "rogue" not in node.proc.log.read_text()
            finally:
                await _stop(gw2.proc)
        assert gw.proc.popen.poll() is None and node.proc.popen.poll() is None
        await _chat_ok(gw)
    finally:
        await _stop(node.proc, gw.proc)


async def test_garbage_on_every_protocol_from_a_member(tmp_path: Path) -> None:
    """Even a peer holding a valid gateway certificate cannot end a process: garbage on
    pubsub, the DHT, identify, ping and tooti's own protocols, to a gateway and to a node."""
    gw = await _start_gateway(tmp_path)
    rogue = FakeGateway(tmp_path, "rogue", network_key=member_key())
    async with rogue.running():
        node = await _start_node(tmp_path, "n", [rogue.gateway, gw])
        try:
            with trio.fail_after(30):
                await rogue.seen.joined.wait()
            # Become a member in the gateway's eyes: one valid peering exchange.
            info = info_from_p2p_addr(Multiaddr(gw.p2p))
            await rogue.host.connect(info)
            s = await rogue.host.new_stream(info.peer_id, [protocols.PEERING])
            await s.write(encode(pb.GatewayList(records=[rogue.record()])))
            assert await FrameReader(s, max_frame=1 << 20).read_frame(pb.GatewayList) is not None
            junks = [
                b"\x06\xff\xff\xff\xff\xff\xff",
                b"\x05hello",
                b"\xff\xff\xff\xff\x0f" + b"x" * 64,
                b"\x00" * 64,
            ]
            targets = [
                (info.peer_id, p) for p in ("/meshsub/1.1.0", "/meshsub/1.2.0", str(protocols.DHT_PROTOCOL))
            ]
            targets += [
                (peer, p)
                for peer in (info.peer_id, ID.from_base58(node.peer_id))
                for p in (
                    "/ipfs/id/1.0.0",
                    "/ipfs/ping/1.0.0",
                    str(protocols.CONTROL),
                    str(protocols.PEERING),
                )
            ]
            targets.append((ID.from_base58(node.peer_id), str(protocols.INFERENCE)))
            for peer, proto in targets:
                for junk in junks:
                    try:
                        with trio.fail_after(5):
                            st = await rogue.host.new_stream(peer, [proto])
                            await st.write(junk)
                            with trio.move_on_after(1):
                                while await st.read(4096):
                                    pass
                    except Exception:
                        pass  # refused, reset or not spoken: all fine, as long as nobody dies
            assert gw.proc.popen.poll() is None, "gateway died"
            assert node.proc.popen.poll() is None, "node died"
            await _chat_ok(gw)
            # Every failure is counted, but logged at most a few times per protocol a minute.
            for proc in (gw.proc, node.proc):
                assert len(proc.log.read_text().splitlines()) < 120
        finally:
            await _stop(node.proc, gw.proc)


async def test_poisoned_gateway_lists_are_ignored(tmp_path: Path) -> None:
    """A member gateway hands the node 300 forged records and records of itself with bogus
    addresses, then an oversized list: the node keeps serving, dials none of them, logs little."""
    gw = await _start_gateway(tmp_path)
    other = keys.generate(keys.NETWORK_PRIVATE)
    forged = []
    for i in range(300):
        kp = load_or_create(tmp_path / f"f{i % 10}.key")
        cert = membership.issue(other, ID.from_pubkey(kp.public_key), valid_for_s=3600)
        forged.append(membership.make_record(kp, cert, [f"/ip4/10.8.0.{i % 250}/tcp/9"]))
    rounds = 0

    def welcome(ann: pb.Announcement, proof: bytes | None) -> pb.Welcome:
        nonlocal rounds
        rounds += 1
        return pb.Welcome(accepted=True, gateways=pb.GatewayList(records=forged[:64]))

    huge = pb.GatewayControl(gateways=pb.GatewayList(records=forged * 20))  # over the frame limit
    rogue = FakeGateway(tmp_path, "rogue", network_key=member_key(), welcome=welcome, then=[huge])
    async with rogue.running():
        node = await _start_node(tmp_path, "n", [rogue.gateway, gw])
        try:
            await _chat_ok(gw)
            with trio.fail_after(30):
                while rounds < 5:  # it keeps rejoining the rogue, with backoff, harmlessly
                    await trio.sleep(0.1)
            await _chat_ok(gw)
            log = node.proc.log.read_text()
            assert "10.8.0." not in log
            assert len(log.splitlines()) < 60, log[-3000:]
            assert node.proc.popen.poll() is None
        finally:
            await _stop(node.proc, gw.proc)


async def test_one_refusing_gateway_does_not_stop_a_node(tmp_path: Path) -> None:
    gw = await _start_gateway(tmp_path)
    refuse = FakeGateway(
        tmp_path,
        "refuser",
        network_key=member_key(),
        welcome=lambda a, p: pb.Welcome(accepted=False, reason="no", credentials_refused=True),
    )
    async with refuse.running():
        node = await _start_node(
            tmp_path, "n", [refuse.gateway, gw], node={"namespace": "acme", "namespace_key": NS_KEY}
        )
        try:
            await _chat_ok(gw)
            assert refuse.seen.proofs  # it was a member, so the node did prove to it
            assert node.proc.popen.poll() is None
        finally:
            await _stop(node.proc, gw.proc)
        # With only refusing gateways configured, the node says so and exits.
        alone = await _start_node(tmp_path, "alone", [refuse.gateway], node={"namespace": "acme"}, wait=False)
        code = await trio.to_thread.run_sync(lambda: alone.proc.popen.wait(30))
        assert code != 0
        assert "every configured gateway refused" in alone.proc.log.read_text()


async def test_expired_and_revoked_gateways_are_dropped(tmp_path: Path) -> None:
    """A member whose certificate expires, and one the operator revokes (the signed list
    reaches the node through another gateway), stop being served within seconds."""
    gw = await _start_gateway(tmp_path)
    short = FakeGateway(tmp_path, "short", network_key=member_key(), valid_for_s=8)
    doomed = FakeGateway(tmp_path, "doomed", network_key=member_key())
    revocations = membership.revoke(member_key(), [doomed.host.get_id()])
    revoker = FakeGateway(
        tmp_path,
        "revoker",
        network_key=member_key(),
        welcome=lambda a, p: pb.Welcome(accepted=True, gateways=pb.GatewayList(revocations=revocations)),
    )
    async with short.running(), doomed.running():
        node = await _start_node(tmp_path, "n", [short.gateway, doomed.gateway, revoker.gateway, gw])
        peer = ID.from_base58(node.peer_id)
        try:
            with trio.fail_after(30):
                await short.seen.joined.wait()
                await doomed.seen.joined.wait()
            assert await try_inference(short.host, peer)
            assert await try_inference(doomed.host, peer)
            async with revoker.running():  # only now can the node reach the revoker
                with trio.fail_after(15):
                    await revoker.seen.joined.wait()
                    while await try_inference(doomed.host, peer):
                        await trio.sleep(0.2)
            with trio.fail_after(15):  # the 8 s certificate runs out
                while await try_inference(short.host, peer):
                    await trio.sleep(0.2)
            log = node.proc.log.read_text()
            assert "no longer a member" in log
            await _chat_ok(gw)
            assert node.proc.popen.poll() is None
        finally:
            await _stop(node.proc, gw.proc)


async def test_lying_node_heartbeats_are_rejected(tmp_path: Path) -> None:
    """A peer posing as a node: absurd, replayed and future-dated heartbeats are refused and
    counted; the gateway's JSON stays valid and routing ignores the lies."""
    gw = await _start_gateway(tmp_path)
    host = build_host(load_or_create(tmp_path / "liar.key"))
    me = host.get_id().to_bytes()

    def ann(seq: int, **kw: object) -> pb.Announcement:
        base: dict[str, object] = dict(
            peer_id=me,
            models=[pb.ModelInfo(name="lies", capacity=4)],
            capacity=4,
            backend_healthy=True,
            seq=seq,
            timestamp_ms=int(time.time() * 1000),
            name="liar",
        )
        base.update(kw)
        return pb.Announcement(**base)  # type: ignore[arg-type]

    try:
        async with host.run(listen_addrs=[]):
            info = info_from_p2p_addr(Multiaddr(gw.p2p))
            await host.connect(info)

            async def join(hello: pb.Announcement) -> tuple[object, FrameReader, pb.GatewayControl | None]:
                s = await host.new_stream(info.peer_id, [protocols.CONTROL])
                await s.write(encode(pb.ControlFrame(hello=pb.Hello(announcement=hello))))
                reader = FrameReader(s, max_frame=1 << 20)
                intro = await reader.read_frame(pb.GatewayControl)
                assert intro is not None and intro.WhichOneof("kind") == "intro"
                return s, reader, await reader.read_frame(pb.GatewayControl)

            # Refused at the door: escape codes in the name, too many models, NaN.
            for bad in (
                ann(1, name="evil\x1b[2J"),
                ann(1, models=[pb.ModelInfo(name=f"m{i}", capacity=1) for i in range(300)]),
                ann(1, ttft_ms_ema=math.nan),
                ann(1, ttft_ms_ema=-1e9),
                ann(1, timestamp_ms=int(time.time() * 1000) + 3_600_000),
            ):
                _, _, w = await join(bad)
                assert w is not None and not w.welcome.accepted
            s, _, w = await join(ann(10))
            assert w is not None and w.welcome.accepted
            bads = [
                ann(10),  # replay of the same seq
                ann(5),  # older
                ann(11, timestamp_ms=int(time.time() * 1000) - 3_600_000),  # stale
                ann(12, decode_tps_ema=math.inf),
                ann(13, capacity=10**6),
            ]
            for b in bads:
                await s.write(encode(pb.ControlFrame(heartbeat=b)))  # type: ignore[attr-defined]
            await s.write(encode(pb.ControlFrame(heartbeat=ann(20, ttft_ms_ema=0.0001))))  # type: ignore[attr-defined]
            async with httpx.AsyncClient(trust_env=False) as client:
                with trio.fail_after(10):
                    while True:
                        r = await client.get(gw.base_url + "/network/nodes")
                        doc = json.loads(r.text)  # strictly valid JSON: no NaN/Infinity
                        if doc["heartbeats"]["rejected"] >= len(bads):
                            break
                        await trio.sleep(0.1)
                (entry,) = [n for n in doc["data"] if n["name"] == "liar"]
                assert entry["ttft_ms"] >= 1.0  # clamped into the plausible range
            await host.close()
        assert gw.proc.popen.poll() is None
    finally:
        await _stop(gw.proc)
