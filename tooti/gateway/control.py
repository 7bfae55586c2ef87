"""Nodes joining this gateway: the control stream, namespace proofs, heartbeats.

    node: Hello(announcement)      gateway: Intro(its record, fresh nonce, revocations)
    node: Proof (if it claims a namespace)
                                   gateway: Welcome(accepted | reason, member gateways)
    node: heartbeat ...            gateway: GatewayList ... (when the membership changes)

A namespace is granted to an allow-listed peer id, or to a node that signs the nonce with the
namespace's private key; the store keeps only public keys, so nothing on the gateway (or in a
copy of its database) can prove a namespace. Heartbeats must pass ``heartbeat.problem``; the
node is evicted at once when its connection drops, and its session is closed within seconds
when its namespace's keys change or the namespace is deleted, so it must prove itself again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from tooti.p2p import keys
from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.p2p.host import peer_of, reset_quietly
from tooti.wire import pb

from . import heartbeat
from .peering import Peering
from .registry import Registry

log = logging.getLogger("tooti.gateway")

#: Largest control frame a node may send (a Hello with 256 models fits in ~40 KiB).
CONTROL_MAX_FRAME = 64 * 1024
_HELLO_TIMEOUT = 10.0
#: Seconds between unprompted membership updates to each joined node.
LIST_REFRESH = 60.0


class NamespaceVerifier(Protocol):
    """What the store says about one namespace."""

    @property
    def public_keys(self) -> Sequence[str]: ...
    @property
    def allowed_peers(self) -> Sequence[str]: ...


#: namespace -> its verifier, or None when no such namespace is registered
NamespaceCheck = Callable[[str], Awaitable[NamespaceVerifier | None]]


@dataclass
class _Session:
    stream: INetStream
    namespace: str
    changed: trio.Event = field(default_factory=trio.Event)
    stale: bool = False  # its namespace changed: it must prove itself again


class NodeControl:
    """Serves ``/tooti/control`` for one gateway. ``namespace_check`` None means open mode:
    any namespace claim is accepted (development only)."""

    def __init__(
        self,
        registry: Registry,
        peering: Peering,
        *,
        namespace_check: NamespaceCheck | None,
        on_leave: Callable[[str], None] = lambda peer: None,
    ) -> None:
        self._registry = registry
        self._peering = peering
        self._check = namespace_check
        self._on_leave = on_leave
        self._sessions: dict[str, _Session] = {}
        self._me = ID.from_base58(peering.peer_id).to_bytes()
        self.refused = 0
        self.heartbeats = 0
        peering.on_change(self._membership_changed)

    def joined(self) -> list[str]:
        return list(self._sessions)

    def namespace_changed(self, names: set[str]) -> None:
        """The store says these namespaces' keys changed or they were deleted: close the
        sessions bound to them; those nodes must prove themselves again."""
        for s in list(self._sessions.values()):
            if s.namespace in names:
                log.info("namespace '%s' changed: closing a joined node's session", s.namespace)
                s.stale = True
                s.changed.set()

    def _membership_changed(self) -> None:
        for s in self._sessions.values():
            s.changed.set()

    async def handle(self, stream: INetStream) -> None:
        peer_id = peer_of(stream)
        peer = str(peer_id)
        reader = FrameReader(stream, max_frame=CONTROL_MAX_FRAME)
        with trio.fail_after(_HELLO_TIMEOUT):
            first = await reader.read_frame(pb.ControlFrame)
            if first is None or first.WhichOneof("kind") != "hello":
                raise FrameError("control stream must start with Hello")
            ann = first.hello.announcement
            nonce = os.urandom(32)
            await stream.write(
                encode(
                    pb.GatewayControl(
                        intro=pb.Intro(
                            record=self._peering.record(),
                            nonce=nonce,
                            revocations=self._peering.trust.revocations or pb.SignedRevocations(),
                        )
                    )
                )
            )
            reason = heartbeat.problem(ann, peer=peer_id.to_bytes())
            credentials = False
            if reason is None and ann.namespace:
                answer = await reader.read_frame(pb.ControlFrame)
                if answer is None or answer.WhichOneof("kind") != "proof":
                    raise FrameError("a node claiming a namespace must send a Proof next")
                reason = await self._namespace_problem(peer, ann, nonce, answer.proof.signature)
                credentials = reason is not None
        if reason:
            self.refused += 1
            log.warning("refused node %s: %s", peer, reason)
            welcome = pb.Welcome(accepted=False, reason=reason, credentials_refused=credentials)
            await stream.write(encode(pb.GatewayControl(welcome=welcome)))
            await stream.close()
            return
        await stream.write(
            encode(
                pb.GatewayControl(welcome=pb.Welcome(accepted=True, gateways=self._peering.gateway_list()))
            )
        )
        heartbeat.clamp_hints(ann)
        self._registry.update(peer, ann)
        session = _Session(stream, ann.namespace)
        old = self._sessions.get(peer)
        if old is not None:
            old.changed.set()  # a newer session replaces it; the old one closes
        self._sessions[peer] = session
        log.info(
            "node %s joined (%s) serving %s",
            peer,
            ann.namespace or "public",
            ", ".join(m.name for m in ann.models) or "nothing yet",
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_updates, session, nursery.cancel_scope)
                await self._read_heartbeats(peer, reader, ann)
                nursery.cancel_scope.cancel()
        except StreamError:
            pass
        finally:
            if self._sessions.get(peer) is session:
                del self._sessions[peer]
                # Evict at once: a dropped connection is a dead node for routing purposes.
                self._registry.drop(peer)
                self._on_leave(peer)
                log.info("node %s left", peer)
            await reset_quietly(stream)

    async def _namespace_problem(
        self, peer: str, ann: pb.Announcement, nonce: bytes, signature: bytes
    ) -> str | None:
        if self._check is None:
            return None
        verifier = await self._check(ann.namespace)
        if verifier is None:
            return f"namespace '{ann.namespace}' is not registered"
        if peer in verifier.allowed_peers:
            return None
        for public in verifier.public_keys:
            if keys.check_namespace_proof(public, signature, nonce, ann.namespace, ann.peer_id, self._me):
                return None
        return f"not authorised for namespace '{ann.namespace}' (wrong or rotated key)"

    async def _read_heartbeats(self, peer: str, reader: FrameReader, first: pb.Announcement) -> None:
        previous = first
        while True:
            frame = await reader.read_frame(pb.ControlFrame)
            if frame is None:
                return
            if frame.WhichOneof("kind") != "heartbeat":
                raise FrameError("only heartbeats may follow the join")
            hb = frame.heartbeat
            reason = heartbeat.problem(hb, peer=first.peer_id, previous=previous)
            if reason is None and hb.namespace != first.namespace:
                reason = "namespace differs from the one proved at join"
            if reason is not None:
                self._registry.rejected_heartbeats += 1
                log.debug("heartbeat from %s rejected: %s", peer, reason)
                continue
            heartbeat.clamp_hints(hb)
            previous = hb
            self._registry.update(peer, hb)
            self.heartbeats += 1

    async def _send_updates(self, session: _Session, scope: trio.CancelScope) -> None:
        """Tell the node of membership changes; end the session when its namespace changed
        (the reader loop is cancelled with the nursery)."""
        while True:
            # Also every LIST_REFRESH seconds: records expire (RECORD_TTL_MS), so a node keeps
            # fresh ones of every member, and keeps redialling one that restarts.
            with trio.move_on_after(LIST_REFRESH):
                await session.changed.wait()
            session.changed = trio.Event()
            if session.stale:
                scope.cancel()
                return
            with trio.move_on_after(5):
                await session.stream.write(encode(pb.GatewayControl(gateways=self._peering.gateway_list())))
