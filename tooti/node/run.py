"""``tooti node start``: build the host, the backend client and the agent, and run them."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import trio
from multiaddr import Multiaddr

from tooti.config import NodeConfig
from tooti.p2p import membership, protocols
from tooti.p2p.host import build_host, guarded, harden
from tooti.p2p.identity import load_or_create

from .agent import NodeAgent
from .backends import make_backend
from .metrics import node_registry, serve_metrics
from .service import InferenceService
from .stats import NodeStats

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.node")


async def run_node(cfg: NodeConfig, *, task_status: TaskStatus[NodeAgent] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node until cancelled. ``task_status.started`` hands back the agent once the host runs.

    Raises ``NamespaceRefused`` when a gateway rejects the node's namespace proof.
    """
    key_pair = load_or_create(cfg.node.identity_key_file)
    host = build_host(key_pair)
    capacity = cfg.node.max_concurrency
    # One client for every backend call: a client per request triples time to first token.
    timeout = httpx.Timeout(
        connect=cfg.timeouts.connect_sec,
        read=cfg.timeouts.first_token_sec,
        write=30.0,
        pool=cfg.timeouts.connect_sec,
    )
    transport = ShardedTransport(capacity + 4)
    async with httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False) as client:
        backend = make_backend(
            cfg.backend.type, client, base_url=cfg.backend.base_url or "", api_key=cfg.backend.api_key
        )
        stats = NodeStats(capacity=capacity)
        agent = NodeAgent(
            host,
            backend,
            stats,
            trust=membership.Trust(cfg.network.id),
            name=cfg.node.name or socket.gethostname(),
            namespace=cfg.node.namespace or "",
            namespace_key=cfg.node.namespace_key,
            bootstrap=cfg.network.bootstrap,
            allow=cfg.models.allow,
            heartbeat_interval=cfg.heartbeat.interval_sec,
            refresh_interval=cfg.models.refresh_sec,
        )
        service = InferenceService(
            backend,
            stats,
            models=lambda: agent.models,
            allowed_peer=agent.is_gateway,
            default_timeout=cfg.timeouts.total_sec,
        )
        host.set_stream_handler(protocols.INFERENCE, guarded("inference")(service.handle_stream))
        # identify and ping (libp2p's own) behind the same guard as tooti's protocols. A node
        # runs no pubsub and no DHT: it talks to gateways over its control streams only.
        harden(host)
        listen = [Multiaddr(a) for a in cfg.network.listen]
        async with host.run(listen_addrs=listen):
            log.info("node %s (peer %s) starting, backend %s", agent.name, host.get_id(), cfg.backend.type)
            try:
                async with trio.open_nursery() as nursery:
                    if cfg.metrics.listen:
                        urls = await nursery.start(
                            serve_metrics, cfg.metrics.listen, node_registry(stats, agent)
                        )
                        log.info("metrics at %s/metrics", urls[0])
                    task_status.started(agent)
                    await agent.run()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await host.close()


# httpcore's pool walks every connection it holds on each request and on each response
# close (is_idle / has_expired / the assignment list comprehension), so one pool of ~1,000
# upstream connections costs O(connections) per request: ~30-40% of the node's CPU in the
# 1,000-stream bench. Pools of this size keep that walk short.
_SHARD_CONNECTIONS = 32


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several httpx connection pools behind one transport, each at most ``_SHARD_CONNECTIONS``.

    A request goes to the pool with the fewest requests in flight (ties: the first), so at
    low concurrency everything runs on pool 0 and reuses its keep-alive connections, and
    with ``max_connections`` requests in flight no pool holds more than its share: a request
    never waits for a connection while the total is under ``max_connections``. A request
    counts as in flight until its response is closed (or fails to arrive).
    """

    def __init__(self, max_connections: int) -> None:
        shards = max(1, math.ceil(max_connections / _SHARD_CONNECTIONS))
        per = math.ceil(max_connections / shards)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._pools = [httpx.AsyncHTTPTransport(limits=limits, trust_env=False) for _ in range(shards)]
        self._in_flight = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        counts = self._in_flight
        i = counts.index(min(counts))
        counts[i] += 1
        try:
            response = await self._pools[i].handle_async_request(request)
        except BaseException:
            counts[i] -= 1
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Counted(response.stream, counts, i),  # type: ignore[arg-type]  # async transport
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Counted(httpx.AsyncByteStream):
    """A response body that takes its request out of its pool's in-flight count when closed."""

    __slots__ = ("_counts", "_index", "_inner", "_open")

    def __init__(self, inner: httpx.AsyncByteStream, counts: list[int], index: int) -> None:
        self._inner, self._counts, self._index, self._open = inner, counts, index, True

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The inner iterator itself: no extra generator frame per chunk.
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._counts[self._index] -= 1
        await self._inner.aclose()
