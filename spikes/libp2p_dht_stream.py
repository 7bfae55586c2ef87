"""Spike: py-libp2p 0.8.1 hosts, a custom request/response protocol, and a private Kademlia DHT.

What it explores, with three hosts in one ``trio.run`` on 127.0.0.1 (A <-> B <-> C, A and C
not connected at first):

1. Hosts that are **Noise only** (the default ``sec_opt`` also accepts ``/plaintext/2.0.0``,
   with which a dialer can claim any peer id) and **yamux only**; the dial cost.
2. A protocol ``/spike/echo/1.0.0`` of length-prefixed frames: a stream per request ("fresh")
   versus requests on one kept stream ("kept").
3. A **private** DHT: C provides a key; A, knowing only B, finds C as its provider.

Run it (about 10 s; ``--rounds`` sets the round trips per measurement)::

    python spikes/libp2p_dht_stream.py [--rounds 200]

Printed here (2 shared cores, other work running; medians, noisy from run to run)::

    dht handlers without the patch: ['/ipfs/kad/1.0.0']   (protocol_prefix='/spike' ignored)
    dial with default settings: 251.4 ms; with max_connections_per_peer=1: 4.7 ms
    dht handlers with the patch:    ['/spike/kad/1.0.0']
    verified peer id seen by B's handler == A's id: True
    provide on C: 19.8 ms; find_providers on A: 16.4 ms -> 1 provider(s) = C: True
    A connected to C by the lookup: True
    fresh stream round trip: median 2.34 ms, p90 6.44 ms (200 rounds)
    kept stream round trip:  median 0.74 ms, p90 0.86 ms (200 rounds)

(Other runs: fresh 2.3-3.7 ms, kept 0.6-0.9 ms; provide 19-82 ms, find 14-48 ms.) The default
dial waits out a 250 ms happy-eyeballs delay after it already succeeded. The lookup itself
connects A to C (B names C as a closer peer, A queries it). A fresh stream costs three to four
kept-stream round trips: multistream-select negotiates the protocol on every new stream.

What tooti took from it (``tooti/p2p``): one host builder (``host.py``: Noise-only ``sec_opt``,
yamux, ``max_connections_per_peer=1``, auto-connector off); every libp2p module patch in
``_patches.py`` (happy-eyeballs delay 0, the DHT protocol id replaced in each module that
imported it by value, pinned-version check); provider keys as multihash hex of a sha256
(``_dht.py``, ``GATEWAYS_KEY``) and de-duplicated provider lists; a guard around every stream
handler (one escaping exception kills the host); length-prefixed framing of its own
(``framing.py``); and the inference protocol reuses open streams (``StreamPool``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import struct
import time
from collections.abc import Awaitable, Callable

import libp2p
import libp2p.kad_dht.common as kad_common
import libp2p.kad_dht.kad_dht as kad_dht
import libp2p.kad_dht.peer_routing as kad_routing
import libp2p.kad_dht.provider_store as kad_providers
import libp2p.kad_dht.value_store as kad_values
import libp2p.network.swarm as swarm
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

ECHO = TProtocol("/spike/echo/1.0.0")
DHT_ID = TProtocol("/spike/kad/1.0.0")
LOCAL = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
# Trap: provide() parses its key as a CID, then hex, then UTF-8; multihash hex of a sha256
# (0x12 = sha2-256, 0x20 = 32 bytes) is the form that round-trips.
MODEL_KEY = "1220" + hashlib.sha256(b"spike/model/smollm2").hexdigest()


def _patch_libp2p() -> None:
    # Trap: every dial waits out a 250 ms happy-eyeballs delay even after it succeeded.
    swarm._HAPPY_EYEBALLS_DELAY = 0
    # Trap: KadDHT speaks /ipfs/kad/1.0.0 whatever protocol_prefix says; five modules copied
    # the constant at import, so each copy is replaced (tooti does this in p2p/_patches.py).
    for module in (kad_common, kad_dht, kad_routing, kad_providers, kad_values):
        module.PROTOCOL_ID = DHT_ID  # type: ignore[attr-defined]


def make_host(conn: ConnectionConfig | None = None) -> IHost:
    key_pair = create_new_key_pair()  # Ed25519 identity; the peer id is derived from it
    # Noise needs its own X25519 static key; the identity key signs it inside the handshake.
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = libp2p.new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},  # Noise ONLY: no plaintext, secio or TLS fallback
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
        connection_config=conn
        or ConnectionConfig(max_connections_per_peer=1, min_connections=0, low_watermark=0),
    )

    # The swarm's auto-connector tops connections up towards ~150 and redials departed peers;
    # it has no switch, so a start() that does nothing keeps it off.
    async def _stay_off() -> None:
        return None

    host.get_network().auto_connector.start = _stay_off  # type: ignore[attr-defined]
    return host


async def read_frame(stream: INetStream) -> bytes | None:
    """One length-prefixed frame, or None at a clean end. (libp2p's read_exactly gives up
    after 100 partial reads, so this loops itself; a read at the end raises StreamEOF.)"""
    buf = b""
    while len(buf) < 4:
        try:
            buf += await stream.read(4 - len(buf))
        except StreamEOF:
            if not buf:
                return None
            raise
    (size,) = struct.unpack(">I", buf)
    body = b""
    while len(body) < size:
        body += await stream.read(size - len(body))  # StreamEOF inside a frame: truncated
    return body


async def write_frame(stream: INetStream, body: bytes) -> None:
    await stream.write(struct.pack(">I", len(body)) + body)


def echo_handler(seen: list[str]) -> Callable[[INetStream], Awaitable[None]]:
    async def handle(stream: INetStream) -> None:
        # Trap: an exception escaping a handler tears down the host and its whole trio.run.
        try:
            seen.append(str(stream.muxed_conn.peer_id))  # Noise-verified, not claimed
            while (frame := await read_frame(stream)) is not None:
                await write_frame(stream, b"echo:" + frame)
            await stream.close()
        except Exception as exc:
            print(f"echo handler failed: {exc!r}")
            await stream.reset()

    return handle


def stats(samples: list[float]) -> str:
    qs = statistics.quantiles(samples, n=10)
    return f"median {statistics.median(samples):.2f} ms, p90 {qs[-1]:.2f} ms ({len(samples)} rounds)"


async def measure(a: IHost, c: IHost, rounds: int) -> None:
    payload = b"x" * 200  # about one OpenAI request/response line

    async def round_trip(s: INetStream) -> None:
        await write_frame(s, payload)
        assert await read_frame(s) == b"echo:" + payload

    fresh: list[float] = []
    kept: list[float] = []
    kept_stream = await a.new_stream(c.get_id(), [ECHO])
    for _ in range(rounds):  # interleaved, so machine noise hits both alike
        t0 = time.perf_counter()
        s = await a.new_stream(c.get_id(), [ECHO])  # multistream-select + yamux SYN each time
        await round_trip(s)
        await s.close()
        t1 = time.perf_counter()
        await round_trip(kept_stream)
        fresh.append((t1 - t0) * 1000)
        kept.append((time.perf_counter() - t1) * 1000)
    await kept_stream.close()
    print(f"fresh stream round trip: {stats(fresh)}")
    print(f"kept stream round trip:  {stats(kept)}")


async def dial_ms(conn: ConnectionConfig | None) -> float:
    x, y = make_host(conn), make_host(conn)
    async with x.run(LOCAL), y.run(LOCAL):
        t0 = time.perf_counter()
        await x.connect(PeerInfo(y.get_id(), y.get_addrs()))
        took = (time.perf_counter() - t0) * 1000
        await trio.sleep(0.2)  # let identify finish: closing under it logs ERRORs (harmless)
        await x.close()
        await y.close()
    return took


def dht_handlers(host: IHost) -> list[str]:
    return sorted(str(p) for p in host.get_mux().handlers if p and "kad" in str(p))


async def main(rounds: int) -> None:
    probe = make_host()  # never run: only shows which protocol id KadDHT registers
    kad_dht.KadDHT(probe, kad_dht.DHTMode.SERVER, protocol_prefix=TProtocol("/spike"))
    print(f"dht handlers without the patch: {dht_handlers(probe)}   (protocol_prefix='/spike' ignored)")
    slow = await dial_ms(ConnectionConfig())  # libp2p's defaults, before the patch
    fast = await dial_ms(None)  # max_connections_per_peer=1 alone ends the wait too
    _patch_libp2p()
    print(f"dial with default settings: {slow:.1f} ms; with max_connections_per_peer=1: {fast:.1f} ms")

    a, b, c = make_host(), make_host(), make_host()
    seen: list[str] = []
    for h in (a, b, c):
        h.set_stream_handler(ECHO, echo_handler(seen))
    # Random walk off: it would dial peers nobody chose; the routing table is seeded by hand.
    dhts = [kad_dht.KadDHT(h, kad_dht.DHTMode.SERVER, enable_random_walk=False) for h in (a, b, c)]
    print(f"dht handlers with the patch:    {dht_handlers(a)}")

    async with a.run(LOCAL), b.run(LOCAL), c.run(LOCAL):
        async with background_trio_service(dhts[0]), background_trio_service(dhts[1]):
            async with background_trio_service(dhts[2]):
                await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
                await c.connect(PeerInfo(b.get_id(), b.get_addrs()))
                s = await a.new_stream(b.get_id(), [ECHO])
                await write_frame(s, b"hi")
                await read_frame(s)
                await s.close()
                print(f"verified peer id seen by B's handler == A's id: {seen[-1] == str(a.get_id())}")

                # Seed the routing tables from the live connections (no bootstrap list here).
                for dht, peer in ((dhts[0], b), (dhts[1], a), (dhts[1], c), (dhts[2], b)):
                    await dht.add_peer(peer.get_id())
                t0 = time.perf_counter()
                await dhts[2].provide(MODEL_KEY)
                t1 = time.perf_counter()
                found = await dhts[0].find_providers(MODEL_KEY)
                t2 = time.perf_counter()
                ids = {p.peer_id for p in found}  # duplicates: one per DHT peer that stored it
                print(
                    f"provide on C: {(t1 - t0) * 1000:.1f} ms; find_providers on A: {(t2 - t1) * 1000:.1f} ms"
                    f" -> {len(ids)} provider(s) = C: {ids == {c.get_id()}}"
                )
                record = next(p for p in found if p.peer_id == c.get_id())
                # The iterative lookup itself may have dialled C (B named it as a closer peer).
                print(f"A connected to C by the lookup: {bool(a.get_network().get_connections(c.get_id()))}")
                await a.connect(record)  # dial from the record's addresses (a no-op if connected)
                await measure(a, c, rounds)
            for h in (a, b, c):
                await h.close()  # Trap: leaving host.run() does not close connections


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    logging.basicConfig(level=logging.WARNING)
    # `import libp2p` sets propagate=False; its DHT logs a spurious warning per inbound stream.
    logging.getLogger("libp2p").propagate = True
    logging.getLogger("libp2p").setLevel(logging.ERROR)
    trio.run(main, ap.parse_args().rounds)
