"""Every change tooti makes to py-libp2p's module state, in one place, for the pinned version.

py-libp2p 0.8.1 has defaults that are wrong for tooti and no argument to change them; each
patch below says what it changes and why. Importing this module applies them (idempotent);
a different libp2p version fails the import loudly, so an upgrade re-checks every patch
instead of silently running without it. Patches to one object (a host's swarm, a
connection) live next to where that object is built (``host.py``), and say so.
"""

from __future__ import annotations

from importlib.metadata import version

import libp2p.kad_dht.common as _kad_common
import libp2p.kad_dht.kad_dht as _kad_dht
import libp2p.kad_dht.peer_routing as _kad_routing
import libp2p.kad_dht.provider_store as _kad_providers
import libp2p.kad_dht.value_store as _kad_values
import libp2p.network.swarm as _swarm
import libp2p.pubsub.pubsub as _pubsub

from tooti.p2p.protocols import DHT_PROTOCOL

PINNED = "0.8.1"

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
