"""One gateway's parts, assembled: membership, nodes joining, probes, dispatch.

HTTP lives in ``app.py`` and knows this object only through ``registry``, ``dispatcher`` and
the read-only figures; the p2p handlers are ``control.handle`` and ``peering.handle``.
"""

from __future__ import annotations

from collections.abc import Callable

from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair

from tooti.p2p import membership
from tooti.wire import pb

from .control import NamespaceCheck, NodeControl
from .dispatch import Dispatcher
from .peering import Peering
from .probes import Probes
from .registry import Registry
from .relay import StreamPool


class Gateway:
    def __init__(
        self,
        host: IHost,
        key_pair: KeyPair,
        *,
        trust: membership.Trust,
        certificate: pb.Certified,
        ttl: float,
        max_attempts: int,
        first_token_timeout: float,
        total_timeout: float,
        namespace_check: NamespaceCheck | None,
        known_namespaces: Callable[[], set[str]] = set,
        learn_sec: float = 0.0,
    ) -> None:
        self.host = host
        self.peer_id = str(host.get_id())
        self.registry = Registry(ttl=ttl, learn_max=learn_sec)
        self.pool = StreamPool(host)
        self.peering = Peering(host, key_pair, trust, certificate)
        self.control = NodeControl(
            self.registry, self.peering, namespace_check=namespace_check, on_leave=self.pool.forget
        )
        self.probes = Probes(host, self.registry)
        self.dispatcher = Dispatcher(
            self.registry,
            self.pool,
            max_attempts=max_attempts,
            first_token_timeout=first_token_timeout,
            total_timeout=total_timeout,
            known_namespaces=known_namespaces,
        )

    @property
    def heartbeats(self) -> dict[str, int]:
        return {"control": self.control.heartbeats, "rejected": self.registry.rejected_heartbeats}

    @property
    def other_gateways(self) -> dict[str, str]:
        """Member gateways this one knows: peer id -> first address."""
        return {m.peer_id: m.addrs[0] for m in self.peering.book.members()}

    @property
    def addrs(self) -> list[str]:
        return self.peering.addrs
