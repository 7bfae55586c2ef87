"""``tooti gateway start``: one trio run holding the libp2p host, the registry and the HTTP server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from tooti.config import GatewayConfig
from tooti.p2p import protocols
from tooti.p2p.discovery import Discovery
from tooti.p2p.host import build_host, dialable, guarded
from tooti.p2p.identity import load_or_create

from .admin_http import AdminAccess
from .app import Accounts, create_app
from .core import Gateway, NamespaceCheck

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.gateway")


class Started:
    """What a running gateway tells whoever started it."""

    def __init__(self, gateway: Gateway, http_urls: list[str], p2p_addrs: list[str]) -> None:
        self.gateway = gateway
        self.http_urls = http_urls
        self.p2p_addrs = p2p_addrs


async def run_gateway(
    cfg: GatewayConfig,
    *,
    accounts: Accounts | None = None,
    namespace_check: NamespaceCheck | None = None,
    known_namespaces: Callable[[], set[str]] = set,
    task_status: TaskStatus[Started] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a gateway until cancelled. ``task_status.started`` gets a :class:`Started` once
    both the p2p host and the HTTP server listen."""
    key_pair = load_or_create(cfg.gateway.identity_key_file)
    host = build_host(key_pair)
    gw = Gateway(
        host,
        ttl=cfg.registry.heartbeat_ttl_sec,
        max_attempts=cfg.routing.max_attempts,
        first_token_timeout=cfg.timeouts.first_token_sec,
        total_timeout=cfg.timeouts.total_sec,
        namespace_check=namespace_check,
        known_namespaces=known_namespaces,
    )
    host.set_stream_handler(protocols.CONTROL, guarded("control")(gw.handle_control))
    host.set_stream_handler(protocols.PEERING, guarded("peering")(gw.handle_peering))
    discovery = Discovery(host, role="gateway", heartbeat_rate_limit=1000.0)
    discovery.on_heartbeat(gw.on_gossip_heartbeat)
    discovery.on_gateway(gw.on_gossip_gateway)
    app = create_app(
        gw, max_body_bytes=cfg.gateway.max_body_bytes, accounts=accounts, admin=AdminAccess.from_config(cfg)
    )
    hc = HypercornConfig()
    hc.bind = [cfg.gateway.http_listen]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75
    async with host.run(listen_addrs=[Multiaddr(a) for a in cfg.network.listen]):
        try:
            p2p = dialable(list(cfg.network.announce) or [str(a) for a in host.get_addrs()], gw.peer_id)
            gw.addrs = p2p
            async with trio.open_nursery() as nursery:
                await nursery.start(discovery.run)
                nursery.start_soon(gw.expire_loop)
                nursery.start_soon(gw.rtt_loop)
                nursery.start_soon(gw.peering_loop, list(cfg.network.bootstrap))
                nursery.start_soon(_announce_loop, discovery, gw)
                urls = await nursery.start(_serve, app, hc)
                log.info("gateway %s listening: http %s, p2p %s", gw.peer_id, ", ".join(urls), ", ".join(p2p))
                task_status.started(Started(gw, urls, p2p))
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await host.close()


async def _announce_loop(discovery: Discovery, gw: Gateway, *, interval: float = 10.0) -> None:
    """Tell the network where this gateway is, so nodes anywhere can join it: on the gateways
    gossip topic, and under the DHT's gateways key (with the gateways it peers with seeded into
    its routing table, so lookups reach them)."""
    seeded: set[str] = set()
    while True:
        for peer in set(gw.other_gateways) - seeded:
            if gw.host.get_network().get_connections(ID.from_base58(peer)):
                await discovery.add_peer(ID.from_base58(peer))
                seeded.add(peer)
        if gw.addrs:
            await discovery.provide_gateway()
            try:
                await discovery.publish_gateway(gw.addrs)
            except Exception as exc:  # noqa: BLE001 - nobody subscribed yet; try again later
                log.debug("gateway announcement not sent: %s", exc)
        await trio.sleep(interval)


async def _serve(app, hc: HypercornConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    await serve(app, hc, task_status=task_status, mode="asgi")
