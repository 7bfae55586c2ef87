"""What the gateway's metrics read at scrape time: nodes, heartbeats, queue, database.

Nothing here runs on the request path: :class:`StateCollector` reads the node registry, the
control service's counters, the admission queue and the accounts' health when Prometheus
scrapes. Per-node series cover at most ``MAX_NODE_SERIES`` nodes, the most recently heard.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tooti._sanitize import printable

if TYPE_CHECKING:
    from .metrics import GatewayMetrics
    from .registry import NodeEntry, Registry

MAX_NODE_SERIES = 500


class StateCollector(Collector):
    """Reads the node registry, the gateway's counters and the accounts at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        registry = self._m.node_registry
        now = time.monotonic()
        entries = list(registry.all())
        live = [e for e in entries if now - e.last_seen <= registry.ttl]
        nodes = GaugeMetricFamily(
            "tooti_gateway_nodes", "Nodes known to this gateway, by state.", labels=["state"]
        )
        nodes.add_metric(["live"], sum(1 for e in live if e.healthy))
        nodes.add_metric(["unhealthy"], sum(1 for e in live if not e.healthy))
        nodes.add_metric(["evicted"], len(entries) - len(live))
        yield nodes
        admission = getattr(getattr(self._m.gateway, "dispatcher", None), "admission", None)
        yield GaugeMetricFamily(
            "tooti_gateway_requests_queued",
            "Requests waiting in the admission queue for a node with a free slot.",
            value=getattr(admission, "depth", 0),
        )
        yield GaugeMetricFamily(
            "tooti_gateway_exchanges_in_flight",
            "Exchanges this gateway has open with nodes right now (requests in flight).",
            value=sum(e.local_in_flight for e in entries),
        )
        yield from _node_families(entries, now, registry.ttl)
        yield from self._gateway_counters(registry)
        yield from self._accounts()

    def _gateway_counters(self, registry: Registry) -> Iterator[Metric]:
        # The node control service keeps these counters; read here so they cost nothing more.
        control = getattr(self._m.gateway, "control", None)
        yield CounterMetricFamily(
            "tooti_gateway_heartbeats_received",
            "Node heartbeats accepted on control streams.",
            value=getattr(control, "heartbeats", 0),
        )
        yield CounterMetricFamily(
            "tooti_gateway_heartbeats_rejected",
            "Heartbeats whose claims did not match their sender.",
            value=registry.rejected_heartbeats,
        )
        yield CounterMetricFamily(
            "tooti_gateway_nodes_refused",
            "Nodes refused at join (failed namespace proof or not allowed).",
            value=getattr(control, "refused", 0),
        )

    def _accounts(self) -> Iterator[Metric]:
        accounts = self._m.accounts
        if accounts is None:
            return
        health = accounts.health()
        yield GaugeMetricFamily(
            "tooti_gateway_database_up",
            "1 while the accounts database answers.",
            value=int(bool(health.get("ok"))),
        )
        yield GaugeMetricFamily(
            "tooti_gateway_usage_rows_pending",
            "Usage rows waiting to be written to the database.",
            value=health.get("pending_usage_rows", 0),
        )
        ledger = health.get("usage_ledger")
        if not isinstance(ledger, dict):
            return
        rows = CounterMetricFamily(
            "tooti_gateway_usage_rows",
            "Usage rows by outcome since start: written, dead_lettered (kept aside), lost, "
            "clamped and normalised (repaired on the way in).",
            labels=["outcome"],
        )
        for outcome in ("written", "dead_lettered", "lost", "clamped", "normalised"):
            value = ledger.get(outcome)
            if isinstance(value, int | float):
                rows.add_metric([outcome], value)
        yield rows
        flush_ms = ledger.get("last_flush_latency_ms")
        if isinstance(flush_ms, int | float):
            yield GaugeMetricFamily(
                "tooti_gateway_usage_flush_seconds",
                "Duration of the ledger's last successful batch write.",
                value=flush_ms / 1000,
            )


def _node_families(entries: list[NodeEntry], now: float, ttl: float) -> Iterator[Metric]:
    shown = sorted(entries, key=lambda e: e.last_seen, reverse=True)[:MAX_NODE_SERIES]
    labels = ["node", "namespace"]
    info = GaugeMetricFamily(
        "tooti_gateway_node_info",
        "One series per node: its name and version.",
        labels=[*labels, "name", "version"],
    )
    families = {
        "up": GaugeMetricFamily("tooti_gateway_node_up", "1 if the node is live and healthy.", labels=labels),
        "capacity": GaugeMetricFamily(
            "tooti_gateway_node_capacity", "Requests the node runs at once.", labels=labels
        ),
        "load": GaugeMetricFamily("tooti_gateway_node_load", "Requests the node is running.", labels=labels),
        "ttft": GaugeMetricFamily(
            "tooti_gateway_node_ttft_seconds",
            "The node's time to first token (moving average).",
            labels=labels,
        ),
        "observed_ttft": GaugeMetricFamily(
            "tooti_gateway_node_observed_ttft_seconds",
            "Time from this gateway's request to the node's answer head (moving average, routing's figure).",
            labels=labels,
        ),
        "tps": GaugeMetricFamily(
            "tooti_gateway_node_tokens_per_second", "The node's decode speed (moving average).", labels=labels
        ),
        "rtt": GaugeMetricFamily(
            "tooti_gateway_node_rtt_seconds", "Round trip from this gateway to the node.", labels=labels
        ),
        "age": GaugeMetricFamily(
            "tooti_gateway_node_heartbeat_age_seconds", "Time since the node's last heartbeat.", labels=labels
        ),
    }
    for e in shown:
        values = [e.peer_id, e.namespace]
        info.add_metric([*values, printable(e.name, 64), printable(e.version, 32)], 1)
        families["up"].add_metric(values, int(e.healthy and now - e.last_seen <= ttl))
        families["capacity"].add_metric(values, e.capacity)
        families["load"].add_metric(values, e.load())
        families["ttft"].add_metric(values, e.ttft_ms / 1000)
        if e.observed_ttft_ms:
            families["observed_ttft"].add_metric(values, e.observed_ttft_ms / 1000)
        families["tps"].add_metric(values, e.tps)
        if e.rtt_ms is not None:
            families["rtt"].add_metric(values, e.rtt_ms / 1000)
        families["age"].add_metric(values, now - e.last_seen)
    yield info
    yield from families.values()
