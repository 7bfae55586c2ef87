"""Attacker peers for tests: libp2p hosts built from tooti's own modules that pose as gateways
(members of the test network, or impostors holding another network's certificate) and
record what the real processes did to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from harness import procs as _procs
from tooti.p2p import keys, membership, protocols
from tooti.p2p.framing import FrameReader, encode
from tooti.p2p.host import build_host, guarded, peer_of
from tooti.p2p.identity import load_or_create
from tooti.wire import pb

#: Replaces the Welcome a fake gateway sends: (hello, proof signature) -> Welcome.
WelcomeFn = Callable[[pb.Announcement, bytes | None], pb.Welcome]


@dataclass
class Seen:
    """What a fake gateway observed."""

    hellos: list[pb.Announcement] = field(default_factory=list)
    proofs: list[bytes] = field(default_factory=list)
    heartbeats: int = 0
    joined: trio.Event = field(default_factory=trio.Event)
    node_peers: list[ID] = field(default_factory=list)
    connections_from: set[str] = field(default_factory=set)


class FakeGateway:
    """A libp2p host speaking the gateway side of ``/tooti/control``.

    ``network_key``: the key its certificate is signed with (the test network's for a member,
    another for an impostor; None: no valid certificate at all). ``valid_for_s``: lifetime of
    its certificate. ``welcome``: builds the Welcome (default: accepted, no other gateways);
    ``then``: frames sent after it.
    """

    def __init__(
        self,
        tmp: Path,
        name: str,
        *,
        network_key: str | None,
        valid_for_s: float = 3600.0,
        welcome: WelcomeFn | None = None,
        then: list[pb.GatewayControl] | None = None,
    ) -> None:
        self.key_pair = load_or_create(tmp / f"{name}.key")
        self.host: IHost = build_host(self.key_pair)
        self.port = _procs.free_port()
        self.addr = f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.host.get_id()}"
        self.seen = Seen()
        self._welcome = welcome or (lambda ann, proof: pb.Welcome(accepted=True))
        self._then = then or []
        other = keys.generate(keys.NETWORK_PRIVATE)
        self.certificate = membership.issue(network_key or other, self.host.get_id(), valid_for_s=valid_for_s)
        if network_key is None:
            self.certificate.signature = b"\x00" * 64
        self.host.set_stream_handler(protocols.CONTROL, guarded("fake-control")(self._control))

    def record(self) -> pb.GatewayRecord:
        return membership.make_record(self.key_pair, self.certificate, [self.addr])

    @property
    def gateway(self) -> _procs.Gateway:
        """A stand-in for _procs.Gateway, so node configs can bootstrap from this peer."""
        return _procs.Gateway(None, "", self.addr, Path())  # type: ignore[arg-type]

    async def _control(self, stream: INetStream) -> None:
        self.seen.connections_from.add(str(peer_of(stream)))
        reader = FrameReader(stream, max_frame=1 << 20)
        hello = await reader.read_frame(pb.ControlFrame)
        if hello is None or hello.WhichOneof("kind") != "hello":
            return
        ann = hello.hello.announcement
        self.seen.hellos.append(ann)
        intro = pb.Intro(record=self.record(), nonce=b"n" * 32)
        await stream.write(encode(pb.GatewayControl(intro=intro)))
        proof = None
        if ann.namespace:
            frame = await reader.read_frame(pb.ControlFrame)
            if frame is None:
                return
            proof = frame.proof.signature
            self.seen.proofs.append(proof)
        welcome = self._welcome(ann, proof)
        await stream.write(encode(pb.GatewayControl(welcome=welcome)))
        if not welcome.accepted:
            return
        self.seen.node_peers.append(peer_of(stream))
        self.seen.joined.set()
        for frame in self._then:
            await stream.write(encode(frame))
        while await reader.read_frame(pb.ControlFrame) is not None:
            self.seen.heartbeats += 1

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeGateway]:
        async with self.host.run(listen_addrs=[Multiaddr(f"/ip4/127.0.0.1/tcp/{self.port}")]):
            try:
                yield self
            finally:
                await self.host.close()


def member_key() -> str:
    """The test network's private key (what a compromised or rogue member would hold)."""
    return _procs.network()[0].read_text().strip()


async def try_inference(host: IHost, peer: ID) -> bool:
    """True if ``peer`` answers an inference request from ``host`` with a head frame."""
    try:
        with trio.fail_after(10):
            s = await host.new_stream(peer, [protocols.INFERENCE])
            req = pb.InferenceRequest(
                request_id="probe",
                route=pb.ROUTE_CHAT,
                model="loopback",
                body=b'{"model":"loopback","messages":[{"role":"user","content":"x"}]}',
            )
            await s.write(encode(pb.TunnelFrame(request=1, open=req)))
            frame = await FrameReader(s).read_frame(pb.TunnelFrame)
            return frame is not None and frame.WhichOneof("kind") == "head"
    except Exception:  # the stream is reset: refused
        return False
