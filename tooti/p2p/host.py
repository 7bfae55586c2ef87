"""Building a libp2p host the way tooti needs it, and guarding its stream handlers.

Every host here is:

* **Noise only.** py-libp2p's defaults also accept ``/plaintext/2.0.0``, with which a dialer
  can claim any peer id whose public key it knows; with Noise the peer id is proven by the
  handshake, so every "who sent this" check downstream can trust ``stream.muxed_conn.peer_id``.
* **yamux** as the only muxer.
* **Dial-fast.** The swarm waits out a 250 ms happy-eyeballs delay after every successful
  dial; we have one address per peer and set it to zero.
* **Quiet about connections it does not own**: no auto-connector topping up to 100 peers.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import libp2p
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as _new_x25519
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from tooti.p2p import _patches  # noqa: F401 - module-level libp2p patches, applied on import

log = logging.getLogger("tooti.p2p")

# yamux caps open outbound streams per connection at 256 and then blocks silently; tooti
# bounds its own concurrency per node far below this and raises the cap so that the bound
# that bites is ours (with a clear "busy" answer), not the muxer's.
STREAM_CAP = 4096

StreamHandler = Callable[[INetStream], Awaitable[None]]


def _route_libp2p_logs() -> None:
    # `import libp2p` turns propagation off, hiding its logs from our handlers; its debug
    # chatter stays below WARNING unless an operator asks for it.
    lg = logging.getLogger("libp2p")
    lg.propagate = True
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.WARNING)
    # Every inbound DHT stream logs a spurious "Failed to read DHT message" warning.
    logging.getLogger("libp2p.kad_dht").setLevel(logging.ERROR)


def build_host(key_pair: KeyPair, *, max_connections: int = 10_000) -> IHost:
    """A new, not yet running host. Run it with ``async with host.run(listen_addrs=[...])``;
    an empty list is fine for a peer that only dials out."""
    _route_libp2p_logs()
    noise = NoiseTransport(key_pair, noise_privkey=_new_x25519().private_key)
    host = libp2p.new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            # Live connections at once: a gateway holds one per node and per peer gateway.
            # The connection manager's trimming watermarks must sit at or below it.
            max_connections=max_connections,
            high_watermark=max_connections,
            min_connections=0,
            low_watermark=0,
            auto_connect_interval=3600.0,
        ),
    )
    disable_auto_connector(host)
    _return_inbound_slots(host)
    return host


def _return_inbound_slots(host: IHost) -> None:
    # py-libp2p 0.8.1 takes an inbound-limiter slot per connection and gives it back only when
    # the swarm stops, not when the connection closes: a gateway that has seen
    # max_connections connections in its life admits no more. The live connection count is
    # enforced separately (at upgrade and registration, against max_connections), so the
    # lifetime limiter is made too large to bite; the real bound stays max_connections.
    swarm = host.get_network()
    if hasattr(swarm, "_inbound_limiter"):
        swarm._inbound_limiter = trio.CapacityLimiter(2**31)


def allow_redial(host: IHost, peer: ID) -> None:
    """Lift py-libp2p's negative dial cache for ``peer``: after its addresses all failed once,
    the swarm refuses to dial it for up to a minute, longer than tooti's own backoff (a
    restarted gateway must be rejoined within seconds)."""
    unblock = getattr(host.get_network(), "unblock_peer", None)
    if unblock is not None:
        unblock(peer)


Admit = Callable[[ID], Awaitable[bool]]


def harden(host: IHost, *, members_only: tuple[TProtocol, ...] = (), admit: Admit | None = None) -> None:
    """Put every stream handler the host has now (libp2p's own: identify, ping, pubsub, the
    DHT; and tooti's) behind the :func:`guarded` boundary, and the protocols in
    ``members_only`` also behind ``admit(peer)``: a peer it refuses has its stream reset
    before a byte is read. Call once, after every service has registered its handlers."""
    mux = host.get_mux()
    for protocol, handler in list(mux.handlers.items()):
        if protocol is None or handler is None or getattr(handler, "_tooti_guarded", False):
            continue
        inner = handler
        if protocol in members_only and admit is not None:
            inner = _admitted(handler, admit, str(protocol))
        host.set_stream_handler(protocol, guarded(str(protocol))(inner))


def _admitted(handler: StreamHandler, admit: Admit, name: str) -> StreamHandler:
    async def wrapper(stream: INetStream) -> None:
        if not await admit(peer_of(stream)):
            log.debug("%s stream from %s refused: not a member gateway", name, _safe_peer(stream))
            await reset_quietly(stream)
            return
        await handler(stream)

    return wrapper


def disable_auto_connector(host: IHost) -> None:
    # The swarm's auto-connector tops connections up towards ~150 and redials departed peers;
    # tooti decides whom to connect to. It has no switch, and every path checks that start()
    # ran, so a start() that does nothing keeps it off.
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is None:
        return

    async def _stay_off() -> None:
        return None

    connector.start = _stay_off


def dialable(addrs: list[str], peer_id: str) -> list[str]:
    """The addresses other peers can dial, each ending in /p2p/<peer id>. Wildcard listen
    addresses are dropped: they mean nothing to another host."""
    out = []
    for a in addrs:
        if "/ip4/0.0.0.0/" in a or "/ip6/::/" in a:
            continue
        out.append(a if "/p2p/" in a else f"{a}/p2p/{peer_id}")
    return out


def peer_in(addr: str) -> str:
    """The peer id (base58) an address names with its ``/p2p/`` suffix."""
    return addr.rsplit("/p2p/", 1)[-1]


def peer_of(stream: INetStream) -> ID:
    """The Noise-verified peer at the other end of ``stream``."""
    return stream.muxed_conn.peer_id


def raise_stream_cap(stream: INetStream) -> None:
    """Lift yamux's 256 outbound-stream cap on the connection under ``stream`` (see STREAM_CAP)."""
    conn: Any = stream.muxed_conn  # a Yamux connection; the ABC does not declare the cap
    sem = getattr(conn, "stream_backlog_semaphore", None)
    limit = getattr(conn, "stream_backlog_limit", None)
    if sem is None or limit is None or limit >= STREAM_CAP:
        return
    extra = STREAM_CAP - limit
    conn.stream_backlog_limit = STREAM_CAP
    for _ in range(extra):
        sem.release()


def guarded(name: str) -> Callable[[StreamHandler], StreamHandler]:
    """Wrap a stream handler so nothing it raises can reach the host.

    py-libp2p lets one exception escaping a handler tear down the whole host (and every
    other task in the same ``trio.run``). The boundary logs the failure with the peer id
    (never payloads), resets the stream so the peer sees an error rather than a clean end,
    and returns.
    """

    def decorate(handler: StreamHandler) -> StreamHandler:
        @functools.wraps(handler)
        async def wrapper(stream: INetStream) -> None:
            try:
                await handler(stream)
            except BaseException as exc:
                if _is_cancellation(exc) or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                _failures.note(name, _safe_peer(stream), exc)
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    try:
                        await stream.reset()
                    except Exception:  # noqa: BLE001 - already failing; best effort
                        pass

        wrapper._tooti_guarded = True  # type: ignore[attr-defined]  # see harden()
        return wrapper

    return decorate


class _FailureLog:
    """Logs handler failures, at most ``burst`` lines per protocol per ``window`` seconds:
    a peer sending garbage as fast as it can must not fill the disk. Suppressed failures are
    counted and reported in the next line that gets through."""

    def __init__(self, *, burst: int = 5, window: float = 60.0) -> None:
        self._burst, self._window = burst, window
        self._state: dict[str, tuple[float, int, int]] = {}  # name -> (window start, logged, suppressed)
        self.total = 0

    def note(self, name: str, peer: str, exc: BaseException) -> None:
        self.total += 1
        now = time.monotonic()
        start, logged, suppressed = self._state.get(name, (now, 0, 0))
        if now - start > self._window:
            start, logged = now, 0
        if logged >= self._burst:
            self._state[name] = (start, logged, suppressed + 1)
            return
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("%s handler failed for peer %s: %s: %s%s", name, peer, type(exc).__name__, exc, more)
        self._state[name] = (start, logged + 1, 0)


_failures = _FailureLog()


def _is_cancellation(exc: BaseException) -> bool:
    """True for trio.Cancelled, and for a group made only of them (a nursery inside the
    handler being cancelled): shutdown, not a failure to report."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return False


def _safe_peer(stream: INetStream) -> str:
    try:
        return str(peer_of(stream))
    except Exception:  # noqa: BLE001
        return "?"


async def reset_quietly(stream: INetStream) -> None:
    """Reset ``stream``, shielded and bounded, ignoring errors: for clean-up paths where the
    stream may already be broken and the caller must not be held up."""
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - best effort on a stream that may be gone
            pass
