"""The private Kademlia DHT: protocol id, provider keys, result clean-up.

Internal to :mod:`tooti.p2p.discovery`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from tooti.p2p import _patches  # noqa: F401 - the DHT protocol id must be ours before any KadDHT
from tooti.p2p.protocols import DHT_PROTOCOL


def new_dht(host: IHost, *, server: bool) -> KadDHT:
    """A KadDHT, not yet running: server mode answers DHT queries, client mode only asks.

    Random walk stays off: the routing table is seeded by hand from connected gateways,
    and a walk would dial peers the caller did not choose.
    """
    dht = KadDHT(host, DHTMode.SERVER if server else DHTMode.CLIENT, enable_random_walk=False)
    # With fewer than 5 peers in its routing table (any federation of < 5 gateways), a
    # lookup falls back to *every* connected peer and the whole peerstore: a gateway
    # would open a DHT stream to each of its nodes (DHT clients), one failed protocol
    # negotiation and one ERROR log each, on every provide and find. Show the lookup
    # only peers that identify says speak our DHT protocol.
    dht.peer_routing.host = _ServersOnly(host)  # type: ignore[assignment]
    return dht


class _ServersOnly:
    """The host as the DHT's peer routing sees it: connected peers and peerstore ids
    restricted to DHT servers; everything else is the host itself."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        self._peerstore = _ServersOnlyPeerstore(host)

    def __getattr__(self, name: str) -> object:
        return getattr(self._host, name)

    def get_connected_peers(self) -> list[ID]:
        return [p for p in self._host.get_connected_peers() if _is_dht_server(self._host, p)]

    def get_peerstore(self) -> object:
        return self._peerstore


class _ServersOnlyPeerstore:
    def __init__(self, host: IHost) -> None:
        self._host = host

    def __getattr__(self, name: str) -> object:
        return getattr(self._host.get_peerstore(), name)

    def peer_ids(self) -> list[ID]:
        return [p for p in self._host.get_peerstore().peer_ids() if _is_dht_server(self._host, p)]


def _is_dht_server(host: IHost, peer: ID) -> bool:
    # Unknown (identify not done yet) counts as "no": gateways are seeded explicitly.
    try:
        return DHT_PROTOCOL in host.get_peerstore().get_protocols(peer)
    except Exception:  # noqa: BLE001 - peer not in the peerstore
        return False


#: the DHT key every gateway provides, so a gateway that knows one member finds the others
GATEWAYS_KEY = "1220" + hashlib.sha256(b"tooti/gateways").hexdigest()


def dedupe(providers: Iterable[PeerInfo]) -> list[PeerInfo]:
    """One PeerInfo per peer, first-seen order, addresses merged without repeats.

    py-libp2p returns the same provider once per DHT peer that stored its record.
    """
    merged: dict[object, PeerInfo] = {}
    for info in providers:
        seen = merged.get(info.peer_id)
        if seen is None:
            merged[info.peer_id] = PeerInfo(info.peer_id, list(info.addrs))
            continue
        for addr in info.addrs:
            if addr not in seen.addrs:
                seen.addrs.append(addr)
    return list(merged.values())
