"""Every change tooti makes to py-libp2p's module state, in one place, for the pinned version.

py-libp2p 0.8.1 has defaults that are wrong for tooti and no argument to change them; each
patch below says what it changes and why. Importing this module applies them (idempotent);
a different libp2p version fails the import loudly, so an upgrade re-checks every patch
instead of silently running without it. Patches to one object (a host's swarm, a
connection) live next to where that object is built (``host.py``), and say so.
"""

from __future__ import annotations

import logging
from importlib.metadata import version

import libp2p.kad_dht.common as _kad_common
import libp2p.kad_dht.kad_dht as _kad_dht
import libp2p.kad_dht.peer_routing as _kad_routing
import libp2p.kad_dht.provider_store as _kad_providers
import libp2p.kad_dht.value_store as _kad_values
import libp2p.network.swarm as _swarm
import libp2p.pubsub.pubsub as _pubsub
import trio
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux.yamux import Yamux

from tooti.p2p.protocols import DHT_PROTOCOL

PINNED = "0.8.1"
_log = logging.getLogger("tooti.p2p")

if version("libp2p") != PINNED:  # pragma: no cover - guards an upgrade
    raise ImportError(f"tooti's libp2p patches are written for libp2p {PINNED}, found {version('libp2p')}")

# Every dial waits out a 250 ms happy-eyeballs delay, even after it succeeded; tooti has one
# address per peer, so there is nothing to race.
_swarm._HAPPY_EYEBALLS_DELAY = 0

# The DHT speaks /ipfs/kad/1.0.0 whatever `protocol_prefix` says: each module imported the
# constant by value, so each copy is replaced. Speaking our own id keeps tooti's records out
# of the public IPFS DHT and IPFS peers out of our routing tables. Process-wide on purpose.
for _module in (_kad_common, _kad_dht, _kad_routing, _kad_providers, _kad_values):
    if not hasattr(_module, "PROTOCOL_ID"):
        raise ImportError(f"{_module.__name__}.PROTOCOL_ID not found; re-check the DHT patch")
    _module.PROTOCOL_ID = DHT_PROTOCOL  # type: ignore[attr-defined]

#: Messages a pubsub subscription buffers before pubsub drops new ones (default 32). Read by
#: py-libp2p when it creates a subscription's channel; it has no per-call argument.
SUBSCRIPTION_BUFFER = 4096
_pubsub.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_BUFFER


# -- yamux frame writes that a cancellation cannot cut in half --------------------------------

#: Longest a muxer frame write may take once it holds the connection (the peer read nothing
#: for this long): the connection is then closed, since part of the frame may be on the wire.
MUXER_WRITE_BOUND = 30.0


def _shield_muxer_writes() -> None:
    """A yamux frame goes ``_write_frame`` -> Noise ``encrypt`` (which consumes a nonce) -> a
    TCP lock -> ``send_all``, with checkpoints in between and no shield. A task cancelled there
    (a request deadline, a client hang-up, a probe's timeout) leaves the Noise nonce advanced
    with nothing sent, or half a Noise message on the wire: the peer's next decrypt fails
    ("Failed authentication of message") and it drops the whole connection, ending every
    stream on it — a node's control stream included, so the node left rotation and rejoined.
    Here the write, once it holds the connection's write lock, runs shielded (waiting for the
    lock stays cancellable), bounded by MUXER_WRITE_BOUND; a write that exceeds it closes the
    connection, which is broken at that point anyway. The original's per-frame debug
    formatting is gone with it (it cost a struct unpack and an f-string per frame)."""
    if getattr(Yamux._write_frame, "_tooti_shielded", False):
        return

    async def _write_frame(self: Yamux, data: bytes) -> None:
        async with self._write_lock:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(MUXER_WRITE_BOUND) as bound:
                    await self.secured_conn.write(data)
                if bound.cancelled_caught:
                    _log.warning(
                        "muxer write to %s stalled %.0fs: closing the connection",
                        self.peer_id,
                        MUXER_WRITE_BOUND,
                    )
                    with trio.move_on_after(1):
                        await self.secured_conn.close()
                    raise MuxedConnUnavailable("muxer write stalled; connection closed")
        await trio.lowlevel.checkpoint()

    _write_frame._tooti_shielded = True  # type: ignore[attr-defined]  # idempotence marker
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]  # see the docstring


_shield_muxer_writes()
