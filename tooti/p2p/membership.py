"""Who belongs to a network: gateway certificates, revocations and signed gateway records.

A network is an Ed25519 key pair its operator holds. Its public half (the *network id*,
``tooti-net-pub-v1:...``) is configured on every node and gateway; its private half signs

* **certificates**: "peer id P is a gateway of this network from T0 to T1" (``issue``), and
* **revocation lists**: "these peer ids are no longer gateways" (``revoke``).

A gateway publishes where it can be reached as a **record** signed with its own libp2p key
and carrying its certificate. Every recipient — node or gateway — checks a record with
:meth:`Trust.check_record` before it dials, proves anything to, or serves the peer, and keeps
at most :data:`MAX_GATEWAYS` of them in a :class:`GatewayBook` (deduplicated by peer id,
newest wins, expired ones dropped). So a peer without a certificate cannot get itself dialled,
and a list of any size or content costs a recipient at most a bounded amount of work.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from tooti.p2p import keys
from tooti.wire import pb

_CERT_LABEL = b"tooti/gateway-cert/1"
_REVOCATIONS_LABEL = b"tooti/revocations/1"
_RECORD_LABEL = b"tooti/gateway-record/1"

#: Most gateways a node or gateway keeps records of; further ones are ignored.
MAX_GATEWAYS = 64
#: Most addresses one record may carry, and the longest address accepted.
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
#: A record older than this is ignored; gateways re-issue theirs well within it.
RECORD_TTL_MS = 10 * 60 * 1000
#: Clocks may disagree this much before a timestamp from the future is refused.
CLOCK_SKEW_MS = 5 * 60 * 1000
#: Largest encoded record accepted (a certificate, 8 addresses, two signatures).
MAX_RECORD_BYTES = 4096


class MembershipError(Exception):
    """A certificate, revocation list or record is not valid for this network."""


def now_ms() -> int:
    return int(time.time() * 1000)


# -- the operator's side ----------------------------------------------------------------------


def network_id(network_key: str) -> str:
    """The network id (public key text) of a network private key."""
    return keys.public_of(network_key, keys.NETWORK_PRIVATE, keys.NETWORK_PUBLIC)


def issue(
    network_key: str, gateway: ID, *, valid_for_s: float, not_before_ms: int | None = None
) -> pb.Certified:
    """A certificate admitting ``gateway`` for ``valid_for_s`` seconds from now."""
    start = now_ms() if not_before_ms is None else not_before_ms
    cert = pb.GatewayCertificate(
        network_key=keys.public_raw(network_id(network_key), keys.NETWORK_PUBLIC),
        gateway_peer_id=gateway.to_bytes(),
        not_before_ms=start,
        not_after_ms=start + int(valid_for_s * 1000),
        serial=int.from_bytes(os.urandom(8), "big"),
    )
    body = cert.SerializeToString()
    return pb.Certified(
        certificate=body, signature=keys.sign(network_key, keys.NETWORK_PRIVATE, _CERT_LABEL, body)
    )


def revoke(network_key: str, gateways: list[ID], *, issued_ms: int | None = None) -> pb.SignedRevocations:
    """A revocation list naming ``gateways`` (the whole list: it replaces any earlier one)."""
    rev = pb.Revocations(
        network_key=keys.public_raw(network_id(network_key), keys.NETWORK_PUBLIC),
        peer_ids=sorted({g.to_bytes() for g in gateways}),
        issued_ms=now_ms() if issued_ms is None else issued_ms,
    )
    body = rev.SerializeToString()
    return pb.SignedRevocations(
        revocations=body, signature=keys.sign(network_key, keys.NETWORK_PRIVATE, _REVOCATIONS_LABEL, body)
    )


def to_text(message: pb.Certified | pb.SignedRevocations) -> str:
    """A certificate or revocation list as one line of text, for files and configs."""
    kind = "tooti-cert-v1" if isinstance(message, pb.Certified) else "tooti-revocations-v1"
    return f"{kind}:{base64.urlsafe_b64encode(message.SerializeToString()).decode()}"


def certificate_from_text(text: str) -> pb.Certified:
    return pb.Certified.FromString(_from_text(text, "tooti-cert-v1"))


def revocations_from_text(text: str) -> pb.SignedRevocations:
    return pb.SignedRevocations.FromString(_from_text(text, "tooti-revocations-v1"))


def _from_text(text: str, kind: str) -> bytes:
    prefix, sep, body = text.strip().partition(":")
    if not sep or prefix != kind:
        raise MembershipError(f"expected text of kind '{kind}'")
    try:
        return base64.urlsafe_b64decode(body)
    except (binascii.Error, ValueError):
        raise MembershipError("not base64url") from None


# -- a gateway's side -------------------------------------------------------------------------


def make_record(key_pair: KeyPair, certificate: pb.Certified, addrs: list[str]) -> pb.GatewayRecord:
    """This gateway's record: where it listens, signed with its own key."""
    rec = pb.GatewayRecord(certificate=certificate, addrs=addrs[:MAX_ADDRS], issued_ms=now_ms())
    rec.signature = key_pair.private_key.sign(_record_message(rec))
    return rec


def _record_message(rec: pb.GatewayRecord) -> bytes:
    return keys.framed(
        _RECORD_LABEL,
        rec.certificate.certificate,
        *(a.encode() for a in rec.addrs),
        rec.issued_ms.to_bytes(8, "big", signed=True),
    )


# -- everyone's side --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A verified gateway record."""

    peer_id: str
    addrs: tuple[str, ...]
    not_after_ms: int
    issued_ms: int
    record: pb.GatewayRecord


class Trust:
    """What a member of one network trusts: the network id, and the newest valid revocation
    list it has seen. Holds no secret."""

    def __init__(self, network_id_text: str) -> None:
        self.network_id = keys.check_public(network_id_text, keys.NETWORK_PUBLIC)
        self._raw = keys.public_raw(self.network_id, keys.NETWORK_PUBLIC)
        self._revoked: frozenset[bytes] = frozenset()
        self._revocations_issued = -1
        self.revocations: pb.SignedRevocations | None = None

    def is_revoked(self, peer: bytes) -> bool:
        return peer in self._revoked

    def offer_revocations(self, signed: pb.SignedRevocations) -> bool:
        """Adopt ``signed`` if it is valid and newer than the current list. True if adopted."""
        if not signed.revocations:
            return False
        if not keys.verify(
            self.network_id, keys.NETWORK_PUBLIC, signed.signature, _REVOCATIONS_LABEL, signed.revocations
        ):
            return False
        try:
            rev = pb.Revocations.FromString(signed.revocations)
        except DecodeError:
            return False
        if rev.network_key != self._raw or rev.issued_ms <= self._revocations_issued:
            return False
        if rev.issued_ms > now_ms() + CLOCK_SKEW_MS:
            return False
        self._revoked = frozenset(rev.peer_ids)
        self._revocations_issued = rev.issued_ms
        self.revocations = signed
        return True

    def check_certificate(
        self, certified: pb.Certified, *, peer: bytes | None = None
    ) -> pb.GatewayCertificate:
        """The certificate inside ``certified`` if it is signed by this network, current, not
        revoked and (when given) names ``peer``; else MembershipError."""
        if not keys.verify(
            self.network_id, keys.NETWORK_PUBLIC, certified.signature, _CERT_LABEL, certified.certificate
        ):
            raise MembershipError("certificate not signed by this network")
        try:
            cert = pb.GatewayCertificate.FromString(certified.certificate)
        except DecodeError:
            raise MembershipError("malformed certificate") from None
        now = now_ms()
        if cert.network_key != self._raw:
            raise MembershipError("certificate is for another network")
        if peer is not None and cert.gateway_peer_id != peer:
            raise MembershipError("certificate names another peer")
        if cert.not_before_ms > now + CLOCK_SKEW_MS:
            raise MembershipError("certificate not valid yet")
        if cert.not_after_ms <= now:
            raise MembershipError("certificate expired")
        if self.is_revoked(cert.gateway_peer_id):
            raise MembershipError("gateway revoked")
        return cert

    def check_record(self, rec: pb.GatewayRecord, *, peer: bytes | None = None) -> Member:
        """A :class:`Member` if ``rec`` is a valid, fresh record of a member gateway (naming
        ``peer`` when given); else MembershipError. Bounded work for any input."""
        if rec.ByteSize() > MAX_RECORD_BYTES:
            raise MembershipError("record too large")
        cert = self.check_certificate(rec.certificate, peer=peer)
        gateway = ID(cert.gateway_peer_id)
        public = gateway.extract_public_key()
        if public is None or not public.verify(_record_message(rec), rec.signature):
            raise MembershipError("record not signed by its gateway")
        now = now_ms()
        if rec.issued_ms > now + CLOCK_SKEW_MS or rec.issued_ms < now - RECORD_TTL_MS:
            raise MembershipError("record is stale or from the future")
        if not rec.addrs or len(rec.addrs) > MAX_ADDRS:
            raise MembershipError("record must carry 1 to 8 addresses")
        name = gateway.to_base58()
        for addr in rec.addrs:
            if len(addr) > MAX_ADDR_LEN or not _names(addr, name):
                raise MembershipError("record address invalid or naming another peer")
        return Member(name, tuple(rec.addrs), cert.not_after_ms, rec.issued_ms, rec)


def _names(addr: str, peer: str) -> bool:
    try:
        return Multiaddr(addr).get_peer_id() == peer
    except Exception:  # noqa: BLE001 - the multiaddr parser raises assorted types for garbage
        return False


class GatewayBook:
    """The member gateways one process knows of: verified, deduplicated, bounded, expiring.

    ``offer`` verifies and keeps a record (newest per peer wins); past :data:`MAX_GATEWAYS`
    new peers are ignored. Members whose certificate or record expired, or who were revoked,
    disappear from :meth:`members`.
    """

    def __init__(self, trust: Trust, *, me: str | None = None) -> None:
        self.trust = trust
        self._me = me
        self._members: dict[str, Member] = {}
        self.rejected = 0

    def offer(self, rec: pb.GatewayRecord, *, peer: bytes | None = None) -> Member | None:
        """Keep ``rec`` if valid; returns the member when it is new or changed its addresses."""
        try:
            member = self.trust.check_record(rec, peer=peer)
        except MembershipError:
            self.rejected += 1
            return None
        if member.peer_id == self._me:
            return None
        old = self._members.get(member.peer_id)
        if old is not None and old.issued_ms >= member.issued_ms:
            return None
        if old is None and len(self._live()) >= MAX_GATEWAYS:
            return None
        self._members[member.peer_id] = member
        return member if old is None or old.addrs != member.addrs else None

    def offer_list(self, gl: pb.GatewayList) -> list[Member]:
        """Offer every record of ``gl`` (at most MAX_GATEWAYS are looked at) and its
        revocations; returns the members that are new or moved."""
        if gl.HasField("revocations"):
            self.trust.offer_revocations(gl.revocations)
        out = []
        for rec in gl.records[:MAX_GATEWAYS]:
            m = self.offer(rec)
            if m is not None:
                out.append(m)
        return out

    def get(self, peer: str) -> Member | None:
        m = self._members.get(peer)
        return m if m is not None and self._valid(m) else None

    def members(self) -> list[Member]:
        return self._live()

    def as_list(self, own: pb.GatewayRecord | None = None) -> pb.GatewayList:
        records = ([own] if own is not None else []) + [m.record for m in self._live()]
        gl = pb.GatewayList(records=records[:MAX_GATEWAYS])
        if self.trust.revocations is not None:
            gl.revocations.CopyFrom(self.trust.revocations)
        return gl

    def _live(self) -> list[Member]:
        for peer in [p for p, m in self._members.items() if not self._valid(m)]:
            del self._members[peer]
        return list(self._members.values())

    def _valid(self, m: Member) -> bool:
        now = now_ms()
        return (
            m.not_after_ms > now
            and m.issued_ms >= now - RECORD_TTL_MS
            and not self.trust.is_revoked(ID.from_base58(m.peer_id).to_bytes())
        )
