"""This gateway's membership, and what it knows of the network's other gateways.

The gateway holds a certificate from the network key (from a file, or issued at start by a
gateway that holds the network key itself, as ``tooti up`` does) and publishes a record of
where it listens, signed with its own key and re-issued every :data:`RECORD_REFRESH` seconds.
It learns of other gateways only through records that verify (:mod:`tooti.p2p.membership`):
from its bootstrap gateways and every member it knows, over ``/tooti/peering`` (each side
first proves itself with its own record), and from the gateways gossip topic. A peer without
a valid certificate is never dialled twice, never told anything, and never passed on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from tooti.p2p import membership, protocols
from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.p2p.host import peer_in, peer_of, reset_quietly
from tooti.wire import pb

log = logging.getLogger("tooti.gateway")

#: Seconds between re-issues of this gateway's record (records live RECORD_TTL_MS).
RECORD_REFRESH = 60.0
#: Largest peering message: MAX_GATEWAYS records of at most MAX_RECORD_BYTES, and revocations.
PEERING_MAX_FRAME = membership.MAX_GATEWAYS * membership.MAX_RECORD_BYTES + 64 * 1024
_EXCHANGE_TIMEOUT = 5.0


class Peering:
    """Membership state of one gateway: its own record, the trusted book of other members."""

    def __init__(
        self, host: IHost, key_pair: KeyPair, trust: membership.Trust, certificate: pb.Certified
    ) -> None:
        self._host = host
        self._key_pair = key_pair
        self.peer_id = str(host.get_id())
        self.trust = trust
        self.certificate = certificate
        trust.check_certificate(certificate, peer=host.get_id().to_bytes())  # fail at start, clearly
        self.book = membership.GatewayBook(trust, me=self.peer_id)
        self.addrs: list[str] = []
        self._record: pb.GatewayRecord | None = None
        self._listeners: list[Callable[[], None]] = []
        self._admitted = trio.Event()  # replaced each time a member is admitted

    # -- what others ask -----------------------------------------------------------------------

    def record(self) -> pb.GatewayRecord:
        """This gateway's current record (addresses must be set first)."""
        if self._record is None or membership.now_ms() - self._record.issued_ms > RECORD_REFRESH * 1000:
            self._record = membership.make_record(self._key_pair, self.certificate, self.addrs)
        return self._record

    def gateway_list(self) -> pb.GatewayList:
        """Every member this gateway vouches for, its own record first, with revocations."""
        return self.book.as_list(own=self.record())

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a member is added or moves, or revocations change."""
        self._listeners.append(callback)

    def is_member(self, peer: str) -> bool:
        return self.book.get(peer) is not None

    async def wait_member(self, peer: str, timeout: float) -> bool:  # noqa: ASYNC109
        """True once ``peer`` is a verified member gateway, False after ``timeout`` seconds.
        Other protocols (gossip, DHT) wait here for the peering exchange that admits a peer."""
        with trio.move_on_after(timeout):
            while not self.is_member(peer):
                await self._admitted.wait()
        return self.is_member(peer)

    def offer(self, gl: pb.GatewayList) -> None:
        revoked_before = self.trust.revocations
        new = self.book.offer_list(gl)
        for m in new:
            log.info("learned of gateway %s at %s", m.peer_id, m.addrs[0])
        if new or self.trust.revocations is not revoked_before:
            self._admitted.set()
            self._admitted = trio.Event()
            for callback in self._listeners:
                callback()

    # -- the peering protocol ------------------------------------------------------------------

    async def handle(self, stream: INetStream) -> None:
        """Inbound peering: the dialer's own record must come first and verify."""
        peer = peer_of(stream)
        reader = FrameReader(stream, max_frame=PEERING_MAX_FRAME)
        with trio.fail_after(_EXCHANGE_TIMEOUT):
            theirs = await reader.read_frame(pb.GatewayList)
            if theirs is None:
                return
            self._check_sender(theirs, peer)
            self.offer(theirs)
            await stream.write(encode(self.gateway_list()))
            await stream.close()

    def _check_sender(self, gl: pb.GatewayList, peer: ID) -> None:
        if gl.HasField("revocations"):
            self.trust.offer_revocations(gl.revocations)
        if not gl.records:
            raise FrameError("peering list without the sender's own record")
        try:
            self.trust.check_record(gl.records[0], peer=peer.to_bytes())
        except membership.MembershipError as exc:
            raise FrameError(f"peer is not a member gateway: {exc}") from None

    async def run(self, bootstrap: list[str], *, interval: float = 5.0) -> None:
        """Exchange lists with the bootstrap gateways and every member, every ``interval`` s."""
        while True:
            targets = {peer_in(a): a for a in bootstrap}
            targets.update({m.peer_id: m.addrs[0] for m in self.book.members()})
            targets.pop(self.peer_id, None)
            async with trio.open_nursery() as nursery:
                for addr in targets.values():
                    nursery.start_soon(self._exchange, addr)
            await trio.sleep(interval)

    async def _exchange(self, addr: str) -> None:
        try:
            with trio.fail_after(_EXCHANGE_TIMEOUT):
                info = info_from_p2p_addr(Multiaddr(addr))
                await self._host.connect(info)
                stream = await self._host.new_stream(info.peer_id, [protocols.PEERING])
                try:
                    await stream.write(encode(self.gateway_list()))
                    reply = await FrameReader(stream, max_frame=PEERING_MAX_FRAME).read_frame(pb.GatewayList)
                finally:
                    await reset_quietly(stream)
                if reply is not None:
                    self._check_sender(reply, info.peer_id)
                    self.offer(reply)
        except Exception as exc:  # noqa: BLE001 - a gateway may be down or not a member; next round
            log.debug("peering with %s failed: %s", addr, exc)

    def on_gossip(self, sender: str, rec: pb.GatewayRecord) -> None:
        """A record from the gateways topic; the validator already checked it names its
        signature-verified publisher."""
        self.offer(pb.GatewayList(records=[rec]))
