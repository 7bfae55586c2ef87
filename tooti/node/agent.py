"""The node agent: joins the network's gateways (outbound only), keeps them informed, serves.

For each gateway it may join — the configured bootstrap addresses, and the member gateways
whose signed records those vouch for — the agent runs one session task: dial, open the
control stream, send ``Hello``, and check the gateway's ``Intro``: its record must carry a
certificate from the configured network, for the peer at the other end of the connection,
current and not revoked. Only then does the node prove its namespace (a signature over the
gateway's fresh nonce) and, once welcomed, send heartbeats and accept inference streams from
that gateway. A gateway that is not a member is never proven to, served, or passed on.

Failures are per gateway: a refusal or a dead gateway backs off that session alone (own
jittered backoff, capped at :data:`BACKOFF_MAX`, and py-libp2p's negative dial cache lifted
before each redial, so a restarted gateway is rejoined within seconds). The agent exits only
at start-up, when every configured gateway refused this node's credentials.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

import tooti
from tooti.p2p import keys, membership, protocols
from tooti.p2p.framing import FrameError, FrameReader, encode
from tooti.p2p.host import allow_redial, peer_in, reset_quietly
from tooti.wire import pb

from .backends.base import Backend, BackendError
from .stats import NodeStats

log = logging.getLogger("tooti.node")

BACKOFF_MIN = 0.1
#: Longest wait between redials of a gateway that went away (it may be restarting).
BACKOFF_MAX = 1.0
#: Wait before retrying a gateway that refused this node or is not a member.
REFUSED_BACKOFF = (5.0, 60.0)
#: Largest frame a gateway may send on the control stream (a full list of member records).
CONTROL_MAX_FRAME = membership.MAX_GATEWAYS * membership.MAX_RECORD_BYTES + 64 * 1024
#: How often a joined gateway's certificate is re-checked (expiry, revocation).
CERT_RECHECK = 1.0
_HANDSHAKE_TIMEOUT = 10.0


class NamespaceRefused(Exception):
    """Every configured gateway refused this node's namespace credentials."""


class _Refused(Exception):
    """This gateway refused us or is not a member: back off from it, longer."""

    def __init__(self, reason: str, *, credentials: bool) -> None:
        super().__init__(reason)
        self.credentials = credentials


class NodeAgent:
    def __init__(
        self,
        host: IHost,
        backend: Backend,
        stats: NodeStats,
        *,
        trust: membership.Trust,
        name: str,
        namespace: str,
        namespace_key: str | None,
        bootstrap: Iterable[str],
        allow: Iterable[str] | None,
        heartbeat_interval: float,
        refresh_interval: float,
    ) -> None:
        self.host = host
        self.backend = backend
        self.stats = stats
        self.trust = trust
        self.book = membership.GatewayBook(trust)
        self.name = name
        self.namespace = namespace
        self._key = namespace_key or ""
        self._bootstrap = list(bootstrap)
        self._allow = set(allow) if allow is not None else None
        self._hb_interval = heartbeat_interval
        self._refresh_interval = refresh_interval
        self.models: set[str] = set()
        self.backend_healthy = False
        self.joined: dict[str, str] = {}  # gateway peer id -> address
        self._sessions: set[str] = set()  # peer ids with a session task
        self._credential_refusals: set[str] = set()  # bootstrap gateways that refused our key
        self._seq = 0
        self._changed = trio.Event()
        self.ready = trio.Event()  # set once joined to at least one gateway
        self._refused_all = trio.Event()

    # -- what other parts ask -------------------------------------------------------------

    def is_gateway(self, peer_id: str) -> bool:
        """True for a member gateway this node joined and whose certificate still holds."""
        return peer_id in self.joined

    def announcement(self) -> pb.Announcement:
        self._seq += 1
        s = self.stats
        return pb.Announcement(
            peer_id=self.host.get_id().to_bytes(),
            namespace=self.namespace,
            models=[pb.ModelInfo(name=m, capacity=s.capacity) for m in sorted(self.models)],
            capacity=s.capacity,
            in_flight=s.in_flight,
            queue_depth=0,
            ttft_ms_ema=s.ttft_ms_ema,
            decode_tps_ema=s.decode_tps_ema,
            backend_healthy=self.backend_healthy,
            version=tooti.__version__,
            seq=self._seq,
            timestamp_ms=int(time.time() * 1000),
            name=self.name,
            routes=sorted(self.backend.routes),
        )

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; raises NamespaceRefused when every configured gateway refused
        this node's credentials before it joined any."""
        await self.refresh_models()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._refresh_loop)
            nursery.start_soon(self._watch_refusals)
            for addr in self._bootstrap:
                self._start_session(addr, bootstrap=True)

    async def _watch_refusals(self) -> None:
        await self._refused_all.wait()
        if not self.ready.is_set():
            raise NamespaceRefused(
                f"every configured gateway refused this node's credentials for namespace '{self.namespace}'"
            )

    def _start_session(self, addr: str, *, bootstrap: bool = False) -> None:
        peer = peer_in(addr)
        if peer in self._sessions or peer == str(self.host.get_id()):
            return
        self._sessions.add(peer)
        self._nursery.start_soon(self._session_loop, addr, peer, bootstrap)

    def _join_members(self) -> None:
        for m in self.book.members():
            self._start_session(m.addrs[0])

    async def refresh_models(self) -> None:
        try:
            names = set(await self.backend.list_models())
            healthy = True
        except BackendError as exc:
            log.warning("backend: %s", exc)
            names, healthy = set(), False
        if self._allow is not None:
            names &= self._allow
        if names != self.models or healthy != self.backend_healthy:
            if names != self.models:
                log.info("serving models: %s", ", ".join(sorted(names)) or "(none)")
            self.models, self.backend_healthy = names, healthy
            self._changed.set()
            self._changed = trio.Event()

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(
                self._refresh_interval if self.backend_healthy else min(2.0, self._refresh_interval)
            )
            await self.refresh_models()

    async def _session_loop(self, addr: str, peer: str, bootstrap: bool) -> None:
        delay = BACKOFF_MIN
        refused_delay = REFUSED_BACKOFF[0]
        lost_logged = False
        while True:
            started = trio.current_time()
            try:
                await self._session(addr, peer)
            except _Refused as exc:
                log.warning("gateway %s refused or is not a member: %s", peer, exc)
                if exc.credentials and bootstrap:
                    self._credential_refusals.add(peer)
                    if self._credential_refusals >= {peer_in(a) for a in self._bootstrap}:
                        self._refused_all.set()
                await trio.sleep(refused_delay * (0.5 + random.random()))
                refused_delay = min(REFUSED_BACKOFF[1], refused_delay * 2)
                continue
            except (OSError, FrameError, Exception) as exc:  # noqa: BLE001 - the gateway is gone; redial
                # Expected while a gateway restarts: one line when it is lost, not one per redial.
                if not lost_logged:
                    log.info("gateway %s: %s: %s", peer, type(exc).__name__, exc or "connection lost")
                    lost_logged = True
            else:
                lost_logged = False
            finally:
                self.joined.pop(peer, None)
            if not bootstrap and self.book.get(peer) is None:
                # A learned gateway whose record expired or was revoked: stop trying it.
                self._sessions.discard(peer)
                return
            if trio.current_time() - started > 30:
                delay = BACKOFF_MIN  # it was up for a while: come back quickly
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(BACKOFF_MAX, delay * 2)

    async def _session(self, addr: str, peer: str) -> None:
        info = info_from_p2p_addr(Multiaddr(addr))
        allow_redial(self.host, info.peer_id)
        with trio.fail_after(_HANDSHAKE_TIMEOUT):
            await self.host.connect(info)
            stream = await self.host.new_stream(info.peer_id, [protocols.CONTROL])
        try:
            reader = FrameReader(stream, max_frame=CONTROL_MAX_FRAME)
            with trio.fail_after(_HANDSHAKE_TIMEOUT):
                member = await self._handshake(stream, reader, info.peer_id)
            self.joined[peer] = addr
            lost = "connection closed"
            log.info("joined gateway %s", peer)
            self.ready.set()
            self._join_members()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats, stream)
                nursery.start_soon(self._recheck, member, nursery.cancel_scope)
                # After Welcome the gateway sends only membership updates; the end of the
                # stream means the gateway (or the path to it) is gone.
                while (update := await reader.read_frame(pb.GatewayControl)) is not None:
                    if update.WhichOneof("kind") != "gateways":
                        raise FrameError("only gateway lists may follow Welcome")
                    self.book.offer_list(update.gateways)
                    self._join_members()
                nursery.cancel_scope.cancel()
            raise ConnectionError(lost)
        finally:
            await reset_quietly(stream)

    async def _handshake(self, stream: INetStream, reader: FrameReader, gateway: ID) -> membership.Member:
        await stream.write(encode(pb.ControlFrame(hello=pb.Hello(announcement=self.announcement()))))
        first = await reader.read_frame(pb.GatewayControl)
        if first is None or first.WhichOneof("kind") != "intro":
            raise FrameError("gateway did not introduce itself")
        intro = first.intro
        if intro.HasField("revocations"):
            self.trust.offer_revocations(intro.revocations)
        try:
            member = self.trust.check_record(intro.record, peer=gateway.to_bytes())
        except membership.MembershipError as exc:
            raise _Refused(f"not a gateway of this network ({exc})", credentials=False) from None
        self.book.offer(intro.record)
        if self.namespace:
            signature = b""
            if self._key:
                signature = keys.prove_namespace(
                    self._key, intro.nonce, self.namespace, self.host.get_id().to_bytes(), gateway.to_bytes()
                )
            await stream.write(encode(pb.ControlFrame(proof=pb.Proof(signature=signature))))
        reply = await reader.read_frame(pb.GatewayControl)
        if reply is None or reply.WhichOneof("kind") != "welcome":
            raise ConnectionError("gateway closed the control stream")
        welcome = reply.welcome
        if not welcome.accepted:
            raise _Refused(welcome.reason[:200], credentials=welcome.credentials_refused)
        self.book.offer_list(welcome.gateways)
        return member

    async def _recheck(self, member: membership.Member, scope: trio.CancelScope) -> None:
        """Leave a gateway once its certificate expires or it is revoked."""
        while True:
            await trio.sleep(CERT_RECHECK)
            if member.not_after_ms <= membership.now_ms() or self.trust.is_revoked(
                ID.from_base58(member.peer_id).to_bytes()
            ):
                log.warning(
                    "gateway %s is no longer a member (certificate expired or revoked)", member.peer_id
                )
                self.joined.pop(member.peer_id, None)
                scope.cancel()
                return

    async def _heartbeats(self, stream: INetStream) -> None:
        """One heartbeat per interval, or at once when the models or health change."""
        while True:
            with trio.move_on_after(self._hb_interval):
                await self._changed.wait()
            await stream.write(encode(pb.ControlFrame(heartbeat=self.announcement())))
