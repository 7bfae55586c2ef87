"""Malformed frames from a peer: the stream is reset and counted, the process keeps serving.

The test process runs its own libp2p host playing a member gateway (``tests._attack``: it
holds a certificate of the test network, so the node joins it), then sends the node garbage
on an inference stream, and then a valid request on a fresh stream, which must still be
answered. The other direction: garbage on a real gateway's control stream must not stop that
gateway from serving, and a Hello claiming another peer id is refused.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from multiaddr import Multiaddr

from harness import procs as _procs
from tests._attack import FakeGateway, member_key
from tooti.p2p import membership, protocols
from tooti.p2p.framing import FrameReader, encode
from tooti.p2p.host import build_host
from tooti.p2p.identity import load_or_create
from tooti.wire import pb


async def test_node_survives_garbage_from_its_gateway(tmp_path: Path) -> None:
    fake = FakeGateway(tmp_path, "gw", network_key=member_key())  # a member: the node joins it
    host = fake.host
    async with fake.running():
        node = await trio.to_thread.run_sync(
            lambda: _procs.start_node(
                tmp_path, "n", gateways=[fake.gateway], backend={"type": "loopback"}, wait=False
            )
        )
        try:
            with trio.fail_after(30):
                await fake.seen.joined.wait()
            peer = fake.seen.node_peers[0]
            # 1. A frame length far beyond the limit, then junk.
            bad = await host.new_stream(peer, [protocols.INFERENCE])
            await bad.write(b"\xff\xff\xff\xff\x0f" + b"junk" * 10)
            with trio.fail_after(10):
                with pytest.raises(Exception):
                    while True:
                        if not await bad.read(1024):
                            break
            # 2. Bytes that are not a valid protobuf message.
            bad2 = await host.new_stream(peer, [protocols.INFERENCE])
            await bad2.write(b"\x04\xff\xff\xff\xff")
            with trio.fail_after(10):
                with pytest.raises(Exception):
                    while True:
                        if not await bad2.read(1024):
                            break
            # 3. The node still answers a well-formed request.
            ok = await host.new_stream(peer, [protocols.INFERENCE])
            req = pb.InferenceRequest(
                request_id="r1",
                route=pb.ROUTE_CHAT,
                model="loopback",
                body=b'{"model":"loopback","messages":[{"role":"user","content":"still here"}]}',
            )
            await ok.write(encode(pb.TunnelFrame(request=1, open=req)))
            reader = FrameReader(ok)
            frames = []
            with trio.fail_after(10):
                while True:
                    f = await reader.read_frame(pb.TunnelFrame)
                    assert f is not None and f.request == 1
                    frames.append(f)
                    if f.WhichOneof("kind") == "end":
                        break
            assert frames[0].head.status == 200
            assert b"still here" in b"".join(f.data for f in frames if f.WhichOneof("kind") == "data")
            assert frames[-1].end.usage.completion_tokens == 2
            assert node.proc.popen.poll() is None
            assert "bad frame" in node.proc.log.read_text()
        finally:
            await trio.to_thread.run_sync(node.proc.stop)


async def test_gateway_survives_garbage_on_control_stream(tmp_path: Path) -> None:
    gw = await trio.to_thread.run_sync(lambda: _procs.start_gateway(tmp_path, auth="open"))
    host = build_host(load_or_create(tmp_path / "rogue.key"))
    try:
        async with host.run(listen_addrs=[]):
            from libp2p.peer.peerinfo import info_from_p2p_addr

            info = info_from_p2p_addr(Multiaddr(gw.p2p))
            await host.connect(info)
            for junk in (b"\xff\xff\xff\xff\xff\xff", b"\x05hello", b"\x02\x08\x01"):
                s = await host.new_stream(info.peer_id, [protocols.CONTROL])
                await s.write(junk)
                with trio.fail_after(15), pytest.raises(Exception):
                    while True:
                        if not await s.read(1024):
                            raise EOFError
            # A Hello claiming someone else's peer id is refused, not registered.
            other = build_host(load_or_create(tmp_path / "other.key")).get_id()
            s = await host.new_stream(info.peer_id, [protocols.CONTROL])
            ann = pb.Announcement(
                peer_id=other.to_bytes(),
                models=[pb.ModelInfo(name="stolen", capacity=1)],
                capacity=1,
                backend_healthy=True,
                seq=1,
            )
            await s.write(encode(pb.ControlFrame(hello=pb.Hello(announcement=ann))))
            reader = FrameReader(s, max_frame=1 << 20)
            intro = await reader.read_frame(pb.GatewayControl)  # any Hello is answered with one
            assert intro is not None and intro.WhichOneof("kind") == "intro"
            trust = membership.Trust(_procs.network()[1])
            assert trust.check_record(intro.intro.record, peer=info.peer_id.to_bytes())  # a member
            answer = await reader.read_frame(pb.GatewayControl)
            assert answer is not None and answer.WhichOneof("kind") == "welcome"
            assert not answer.welcome.accepted and "peer id" in answer.welcome.reason
            await host.close()
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(gw.http + "/healthz")
            assert r.status_code == 200
            models = (await client.get(gw.base_url + "/models")).json()["data"]
            assert "stolen" not in [m["id"] for m in models]
        assert gw.proc.popen.poll() is None
    finally:
        await trio.to_thread.run_sync(gw.proc.stop)
