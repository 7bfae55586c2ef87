"""``tooti gateway start``: one trio run holding the libp2p host, the registry and the HTTP server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from google.protobuf.message import DecodeError
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from tooti._yaml_positions import Problem
from tooti.config import ConfigError, GatewayConfig
from tooti.p2p import membership, protocols
from tooti.p2p.discovery import Discovery
from tooti.p2p.host import build_host, dialable, guarded, harden
from tooti.p2p.identity import load_or_create
from tooti.wire import pb

from .app import Accounts, create_app
from .control import NamespaceCheck
from .core import Gateway
from .http import _hypercorn
from .http import server as http_server
from .registry import LEARN_MAX

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.gateway")


class Started:
    """What a running gateway tells whoever started it."""

    def __init__(self, gateway: Gateway, http_urls: list[str], p2p_addrs: list[str]) -> None:
        self.gateway = gateway
        self.http_urls = http_urls
        self.p2p_addrs = p2p_addrs


def load_membership(cfg: GatewayConfig, host_peer: ID) -> tuple[membership.Trust, pb.Certified]:
    """The network this gateway belongs to and its certificate, from the config: a
    certificate file, or the network key itself (the gateway then admits itself for a day at a
    time, re-issued at each start). Raises ConfigError with the reason when neither works."""
    net = cfg.network
    if not net.id:
        raise _membership_error(cfg, "network.id is required: the network's id from `tooti network init`")
    trust = membership.Trust(net.id)
    try:
        if net.revocations_file is not None:
            trust.offer_revocations(membership.revocations_from_text(Path(net.revocations_file).read_text()))
        if net.certificate_file is not None:
            cert = membership.certificate_from_text(Path(net.certificate_file).read_text())
        elif net.key_file is not None:
            network_key = Path(net.key_file).read_text().strip()
            if membership.network_id(network_key) != trust.network_id:
                raise _membership_error(cfg, f"{net.key_file}: this network key is not the key of network.id")
            cert = membership.issue(network_key, host_peer, valid_for_s=_SELF_CERT_S)
        else:
            raise _membership_error(cfg, "network.certificate_file (or network.key_file) is required")
        trust.check_certificate(cert, peer=host_peer.to_bytes())
    except (OSError, ValueError, membership.MembershipError, DecodeError) as exc:
        raise _membership_error(
            cfg, f"this gateway's membership of the network is not valid: {exc}"
        ) from None
    return trust, cert


def _membership_error(cfg: GatewayConfig, message: str) -> ConfigError:
    return ConfigError([Problem(str(cfg.path or "(defaults)"), None, "network", message)])


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
    # A gateway whose identity existed before this start is restarting: its nodes are coming
    # back, so for a few seconds a model it has not heard of yet is "unavailable", not unknown.
    restarting = Path(cfg.gateway.identity_key_file).exists()  # noqa: ASYNC240 - once, at start-up
    key_pair = load_or_create(cfg.gateway.identity_key_file)
    host = build_host(key_pair, max_connections=cfg.network.max_connections)
    trust, certificate = load_membership(cfg, host.get_id())
    gw = Gateway(
        host,
        key_pair,
        trust=trust,
        certificate=certificate,
        ttl=cfg.registry.heartbeat_ttl_sec,
        max_attempts=cfg.routing.max_attempts,
        first_token_timeout=cfg.timeouts.first_token_sec,
        total_timeout=cfg.timeouts.total_sec,
        namespace_check=namespace_check,
        known_namespaces=known_namespaces,
        learn_sec=LEARN_MAX if restarting else 0.0,
    )
    host.set_stream_handler(protocols.CONTROL, guarded("control")(gw.control.handle))
    host.set_stream_handler(protocols.PEERING, guarded("peering")(gw.peering.handle))
    discovery = Discovery(host, check_record=trust.check_record)
    discovery.on_gateway(gw.peering.on_gossip)
    # Every handler behind the guard; gossip and the DHT for member gateways only (a peer
    # becomes one through the peering exchange, which the first gossip stream may precede).
    members_only = (*_pubsub_protocols(), protocols.DHT_PROTOCOL)

    async def admit(peer: ID) -> bool:
        return await gw.peering.wait_member(str(peer), timeout=_ADMIT_WAIT)

    harden(host, members_only=members_only, admit=admit)
    app = create_app(gw, cfg, accounts=accounts)
    _hypercorn.apply()
    hc = HypercornConfig()
    hc.bind = [cfg.gateway.http_listen]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    # Hypercorn's timeouts, set on purpose so none lies below tooti's own (timeouts.*):
    hc.keep_alive_timeout = 75  # idle keep-alive connections (no request in progress)
    hc.read_timeout = None  # a streaming client sends nothing for minutes; tooti times bodies
    hc.h11_max_incomplete_size = 64 * 1024  # request line + headers
    hc.max_app_queue_size = 10  # ASGI messages buffered per request (body chunks)
    hc.graceful_timeout = 5  # on shutdown, time for streams in flight to finish
    # Hypercorn listens with a backlog of 100: a burst of new clients beyond that has its SYNs
    # dropped and retried after 1 s, 3 s, ... (measured: stalls at 500 streams opened in 2 s).
    hc.backlog = 4096
    async with host.run(listen_addrs=[Multiaddr(a) for a in cfg.network.listen]):
        try:
            p2p = dialable(list(cfg.network.announce) or [str(a) for a in host.get_addrs()], gw.peer_id)
            gw.peering.addrs = p2p
            async with trio.open_nursery() as nursery:
                await nursery.start(discovery.run)
                nursery.start_soon(gw.pool.run)  # owns the inference tunnels to nodes
                nursery.start_soon(gw.probes.watch_silence)
                nursery.start_soon(gw.probes.run, gw.control.joined)
                nursery.start_soon(gw.peering.run, list(cfg.network.bootstrap))
                nursery.start_soon(_announce_loop, discovery, gw)
                if cfg.gateway.http_server == "hypercorn":
                    urls = await nursery.start(_serve, app, hc)
                else:
                    urls = await nursery.start(
                        partial(http_server.serve, app, cfg.gateway.http_host, cfg.gateway.http_port)
                    )
                log.info("gateway %s listening: http %s, p2p %s", gw.peer_id, ", ".join(urls), ", ".join(p2p))
                task_status.started(Started(gw, urls, p2p))
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await host.close()


#: A self-admitting gateway's certificate lives this long (re-issued at every start).
_SELF_CERT_S = 24 * 3600.0
#: How long a gossip or DHT stream from a peer may wait for the peering exchange to admit it.
_ADMIT_WAIT = 10.0


def _pubsub_protocols() -> tuple[TProtocol, ...]:
    from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12

    return (PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, TProtocol("/floodsub/1.0.0"))


async def _announce_loop(discovery: Discovery, gw: Gateway, *, interval: float = 30.0) -> None:
    """Tell the member gateways where this one is: its record on the gateways topic, and the
    DHT's gateways key (with the member gateways seeded into its routing table)."""
    seeded: set[str] = set()
    while True:
        for peer in set(gw.other_gateways) - seeded:
            if gw.host.get_network().get_connections(ID.from_base58(peer)):
                await discovery.add_peer(ID.from_base58(peer))
                seeded.add(peer)
        if gw.addrs:
            await discovery.provide_gateway()
            try:
                await discovery.publish_gateway(gw.peering.record())
            except Exception as exc:  # noqa: BLE001 - nobody subscribed yet; try again later
                log.debug("gateway announcement not sent: %s", exc)
        await trio.sleep(interval)


async def _serve(app, hc: HypercornConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    await serve(app, hc, task_status=task_status, mode="asgi")
