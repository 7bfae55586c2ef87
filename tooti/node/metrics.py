"""The node's Prometheus ``/metrics``: its counters and speed, read at scrape time.

Off by default; ``metrics.listen: host:port`` in node.yaml serves it. Everything is read from
the node's :class:`NodeStats` and agent when scraped, so serving requests costs nothing
extra. The registry is this node's own (not prometheus-client's process-wide default).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .stats import NodeStats

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

    from .agent import NodeAgent

log = logging.getLogger("tooti.node")


class _NodeCollector(Collector):
    def __init__(self, stats: NodeStats, agent: NodeAgent) -> None:
        self._stats = stats
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        s, a = self._stats, self._agent
        yield GaugeMetricFamily("tooti_node_capacity", "Requests this node runs at once.", value=s.capacity)
        yield GaugeMetricFamily("tooti_node_requests_running", "Requests running now.", value=s.in_flight)
        yield CounterMetricFamily(
            "tooti_node_requests_served", "Requests answered to the end.", value=s.served
        )
        yield CounterMetricFamily(
            "tooti_node_requests_failed", "Requests that failed (backend error, deadline).", value=s.failed
        )
        yield CounterMetricFamily(
            "tooti_node_requests_refused_busy",
            "Requests refused at once because the node was at capacity (there is no queue).",
            value=s.refused_busy,
        )
        yield CounterMetricFamily(
            "tooti_node_bad_frames", "Malformed frames received from gateways.", value=s.bad_frames
        )
        yield GaugeMetricFamily(
            "tooti_node_ttft_seconds",
            "Time to first token, moving average (0: none yet).",
            value=s.ttft_ms_ema / 1000,
        )
        yield GaugeMetricFamily(
            "tooti_node_decode_tokens_per_second",
            "Decode speed, moving average (0: none yet).",
            value=s.decode_tps_ema,
        )
        yield GaugeMetricFamily("tooti_node_models", "Models this node offers.", value=len(a.models))
        yield GaugeMetricFamily(
            "tooti_node_backend_up",
            "1 while the backend answers its model list.",
            value=int(a.backend_healthy),
        )
        yield GaugeMetricFamily(
            "tooti_node_gateways_joined", "Gateways this node has joined.", value=len(a.joined)
        )


def node_registry(stats: NodeStats, agent: NodeAgent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(stats, agent))
    return registry


def asgi_app(registry: CollectorRegistry) -> Any:
    """A minimal ASGI app: ``GET /metrics`` and nothing else (lifespan is acknowledged)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            status, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
        else:
            status, body, ctype = 404, b"not found: only GET /metrics is served here\n", "text/plain"
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

    return app


async def serve_metrics(
    listen: str, registry: CollectorRegistry, *, task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics`` on ``listen`` (``host:port``) until cancelled; started with the URLs."""
    hc = HypercornConfig()
    hc.bind = [listen]
    hc.accesslog = None  # a scrape every few seconds is not worth a log line
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75  # above Prometheus's default scrape interval, so connections are reused
    await serve(asgi_app(registry), hc, task_status=task_status, mode="asgi")
