"""A write cancelled inside the muxer must not take the connection (and every stream on it) down.

py-libp2p 0.8.1 writes a yamux frame through Noise (which consumes a nonce) and a TCP lock,
with checkpoints in between and no shield: cancel a writer there and the peer's next decrypt
fails ("Failed authentication of message"), so it drops the connection. A node's control
stream lives on the same connection as its inference streams, so a request cancelled while
its answer is being written (a client hang-up, a deadline, the gateway's ping probe timing
out) used to end the node's session and make it rejoin.
"""

from __future__ import annotations

import random
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from tooti.p2p.host import build_host

_SINK = TProtocol("/test/sink")
#: Cancelled writes to attempt; without the fix the connection died after ~10-80 of them.
_CANCELLED_WRITES = 2_000
_DEADLINE = 60.0


async def _drain(stream: Any) -> None:
    try:
        while await stream.read(65536):
            pass
    except Exception:
        pass


async def test_cancelled_writes_keep_the_connection_and_other_streams() -> None:
    a, b = build_host(create_new_key_pair()), build_host(create_new_key_pair())
    b.set_stream_handler(_SINK, _drain)
    async with b.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]), a.run(listen_addrs=[]):
        try:
            await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
            control = await a.new_stream(b.get_id(), [_SINK])  # stands for the control stream
            cancelled = 0

            async def writer() -> None:
                nonlocal cancelled
                stream = await a.new_stream(b.get_id(), [_SINK])
                while cancelled < _CANCELLED_WRITES:
                    with trio.move_on_after(random.uniform(0, 0.005)) as scope:
                        await stream.write(b"x" * 16384)
                    cancelled += scope.cancelled_caught
                    await control.write(b"heartbeat")  # raises once the connection is gone

            with trio.fail_after(_DEADLINE):
                async with trio.open_nursery() as nursery:
                    for _ in range(16):
                        nursery.start_soon(writer)
            assert cancelled >= _CANCELLED_WRITES
            assert len(a.get_network().get_connections(b.get_id())) == 1
            await control.write(b"still here")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await a.close()
                await b.close()
