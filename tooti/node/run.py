"""``tooti node start``: build the host, the backend client and the agent, and run them."""

from __future__ import annotations

import logging
import socket

import httpx
import trio
from multiaddr import Multiaddr

from tooti.config import NodeConfig
from tooti.p2p import protocols
from tooti.p2p.discovery import Discovery
from tooti.p2p.host import build_host, guarded
from tooti.p2p.identity import load_or_create

from .agent import NodeAgent
from .backends import make_backend
from .service import InferenceService
from .stats import NodeStats

log = logging.getLogger("tooti.node")


async def run_node(cfg: NodeConfig, *, task_status: trio.TaskStatus[NodeAgent] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node until cancelled. ``task_status.started`` hands back the agent once the host runs.

    Raises ``NamespaceRefused`` when a gateway rejects the node's namespace proof.
    """
    key_pair = load_or_create(cfg.node.identity_key_file)
    host = build_host(key_pair)
    capacity = cfg.node.max_concurrency
    # One client for every backend call: a client per request triples time to first token.
    timeout = httpx.Timeout(connect=cfg.timeouts.connect_sec, read=cfg.timeouts.first_token_sec,
                            write=30.0, pool=cfg.timeouts.connect_sec)
    limits = httpx.Limits(max_connections=capacity + 4, max_keepalive_connections=capacity + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        backend = make_backend(cfg.backend.type, client, base_url=cfg.backend.base_url or "",
                               api_key=cfg.backend.api_key)
        stats = NodeStats(capacity=capacity)
        agent = NodeAgent(
            host, backend, stats,
            name=cfg.node.name or socket.gethostname(),
            namespace=cfg.node.namespace or "",
            namespace_secret=cfg.node.namespace_secret,
            bootstrap=cfg.network.bootstrap,
            allow=cfg.models.allow,
            heartbeat_interval=cfg.heartbeat.interval_sec,
            refresh_interval=cfg.models.refresh_sec,
        )
        service = InferenceService(backend, stats, models=lambda: agent.models,
                                   allowed_peer=agent.is_gateway, default_timeout=cfg.timeouts.total_sec)
        host.set_stream_handler(protocols.INFERENCE, guarded("inference")(service.handle_stream))
        # Built before any connection exists: pubsub learns of peers from connection events.
        discovery = Discovery(host, role="node")
        agent.gossip = discovery.publish_heartbeat
        listen = [Multiaddr(a) for a in cfg.network.listen]
        async with host.run(listen_addrs=listen):
            log.info("node %s (peer %s) starting, backend %s", agent.name, host.get_id(), cfg.backend.type)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(discovery.run)
                    task_status.started(agent)
                    await agent.run()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await host.close()
