"""The gateway's Prometheus metrics: what the request path counts, and what is read at scrape.

One :class:`GatewayMetrics` per gateway, with its own ``CollectorRegistry`` (never the
process-wide default, so several gateways in one test process do not collide).

Two kinds of figure:

* Request figures (requests, latencies, tokens, retries, failures) are counted by the request
  path through the small methods here. Their cost is kept flat: label children are cached in
  plain dicts, and the per-token work of a stream is :meth:`StreamTimer.tick` (a clock read
  and a bucket increment, no lock, no label lookup); its buckets merge into the histogram once
  per request.
* State figures (nodes, their load and speed, heartbeats, the database) are read from the
  registry and the accounts at scrape time by :class:`_StateCollector`: nothing on the hot path.

Label cardinality is bounded: ``model`` and ``namespace`` values come from what live nodes
announce (anything else is ``other``) and at most ``MAX_LABEL_VALUES`` of each are ever used;
per-node series cover at most ``MAX_NODE_SERIES`` nodes (the most recently heard from).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tooti._logsummary import Outages

from ._metrics_state import MAX_NODE_SERIES, StateCollector
from ._usage_window import UsageWindow

if TYPE_CHECKING:
    from .registry import NodeEntry, Registry

# prometheus-client adds a `_created` timestamp series beside every counter and histogram
# child by default, doubling the series count for a figure Prometheus does not use.
disable_created_metrics()

MAX_LABEL_VALUES = 200
OTHER = "other"

# Buckets after vLLM's, trimmed: a gateway adds milliseconds, a backend adds seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)

NODE_FAILURE_KINDS = (
    "before_head",  # the node (or the path to it) broke before answering
    "timeout",  # no first byte in time
    "busy",  # refused: at capacity
    "model_not_found",  # refused: no longer serves the model
    "unsupported_route",  # refused: its backend lacks the route
    "backend_error",  # answered with a 5xx error of its backend
    "mid_answer",  # broke during a non-streamed answer
    "mid_stream",  # broke during a stream
)


class StreamTimer:
    """Times one streamed answer: first block, and the gaps between blocks.

    A block may hold several tokens (the relay coalesces frames that are already buffered),
    so a gap is "between deliveries", which is what a client experiences.
    """

    __slots__ = ("counts", "first", "last", "started", "total")

    def __init__(self, started: float) -> None:
        self.started = started
        self.first = 0.0
        self.last = 0.0
        self.total = 0.0
        self.counts = [0] * (len(GAP_BUCKETS) + 1)

    def tick(self) -> None:
        """Call once per block delivered to the client."""
        now = time.perf_counter()
        last = self.last
        self.last = now
        if last:
            gap = now - last
            self.counts[bisect_left(GAP_BUCKETS, gap)] += 1
            self.total += gap
        else:
            self.first = now


class _GapHistogram:
    """Inter-token gaps per model, merged from finished streams; exported as a histogram."""

    def __init__(self) -> None:
        self.by_model: dict[str, tuple[list[int], list[float]]] = {}

    def merge(self, model: str, timer: StreamTimer) -> None:
        entry = self.by_model.get(model)
        if entry is None:
            entry = self.by_model[model] = ([0] * (len(GAP_BUCKETS) + 1), [0.0])
        counts = entry[0]
        for i, n in enumerate(timer.counts):
            if n:
                counts[i] += n
        entry[1][0] += timer.total

    def collect(self) -> Metric:
        family = HistogramMetricFamily(
            "tooti_gateway_inter_token_latency_seconds",
            "Time between consecutive deliveries of a streamed answer to the client.",
            labels=["model"],
        )
        for model, (counts, total) in sorted(self.by_model.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*GAP_BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append((_bound(bound), float(cumulative)))
            family.add_metric([model], buckets, total[0])
        return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class _Bounded:
    """Maps untrusted label values onto at most ``limit`` distinct ones (else ``other``)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str, known: Callable[[str], bool]) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or not known(value):
            return OTHER
        self._seen.add(value)
        return value


class GatewayMetrics:
    """Request metrics plus scrape-time state for one gateway's :class:`Registry`."""

    def __init__(self, registry: Registry) -> None:
        self.node_registry = registry
        self.prometheus = CollectorRegistry(auto_describe=False)
        r = self.prometheus
        self._requests = Counter(
            "tooti_gateway_requests",
            "Inference requests answered, by route, model, namespace and HTTP status.",
            ["route", "model", "namespace", "status"],
            registry=r,
        )
        self._latency = Histogram(
            "tooti_gateway_e2e_request_latency_seconds",
            "Time from a request's arrival to the end of its answer (requests that reached a node).",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._ttft = Histogram(
            "tooti_gateway_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first block of tokens.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._prompt = Counter(
            "tooti_gateway_prompt_tokens", "Prompt tokens processed.", ["model", "namespace"], registry=r
        )
        self._generated = Counter(
            "tooti_gateway_generation_tokens",
            "Tokens generated.",
            ["model", "namespace"],
            registry=r,
        )
        self._retries = Counter(
            "tooti_gateway_retries", "Attempts on another node after one failed or refused.", registry=r
        )
        self._failovers = Counter(
            "tooti_gateway_failovers",
            "Requests answered by a node other than the first one tried.",
            registry=r,
        )
        failures = Counter(
            "tooti_gateway_node_failures",
            "Attempts a node failed or refused, by kind.",
            ["kind"],
            registry=r,
        )
        self._failures = {kind: failures.labels(kind) for kind in NODE_FAILURE_KINDS}
        self._gaps = _GapHistogram()
        self._models = _Bounded(MAX_LABEL_VALUES)
        self._namespaces = _Bounded(MAX_LABEL_VALUES)
        self._children: dict[tuple[str, ...], Any] = {}
        self.usage = UsageWindow()
        self.outages = Outages(logging.getLogger("tooti.gateway"), "node")
        self._totals = [0, 0, 0, 0]  # requests, errors, prompt tokens, generated tokens
        self.gateway: Any = None  # set by admin_http.install: heartbeat and refusal counters
        self.accounts: Any = None  # set by admin_http.install: database health and pending rows
        self.store_latency: Histogram | None = None
        r.register(StateCollector(self))
        r.register(_GapCollector(self._gaps))

    # ---- the request path ----------------------------------------------------------------

    def stream_timer(self, started: float) -> StreamTimer:
        """A timer for one streamed answer; ``started`` is the request's ``perf_counter``."""
        return StreamTimer(started)

    def request_done(
        self,
        *,
        route: str,
        model: str,
        namespace: str,
        entry: NodeEntry | None,
        key_prefix: str,
        status: int,
        started: float,
        prompt_tokens: int,
        completion_tokens: int,
        timer: StreamTimer | None = None,
    ) -> None:
        """Count a request a node answered (or failed): status, latency, tokens, TTFT, gaps."""
        # The client's name may be `namespace:model`; the label is the bare model, which must
        # be one the serving node announced (or one already labelled: the node may be gone).
        if namespace and model.startswith(namespace + ":"):
            model = model[len(namespace) + 1 :]
        served = entry.models if entry is not None else frozenset()
        model = self._models(model, served.__contains__)
        ns = self._namespaces(namespace, lambda n: n in self.node_registry.namespaces()) if namespace else ""
        now = time.perf_counter()
        children = self._children
        key: tuple[str, ...] = (route, model, ns, str(status))
        child = children.get(key)
        if child is None:
            child = children[key] = self._requests.labels(*key)
        child.inc()
        totals = self._totals
        totals[0] += 1
        totals[1] += status >= 400
        totals[2] += prompt_tokens
        totals[3] += completion_tokens
        key = ("latency", route, model)
        child = children.get(key)
        if child is None:
            child = children[key] = self._latency.labels(route, model)
        child.observe(now - started)
        if prompt_tokens or completion_tokens:
            key = ("tokens", model, ns)
            pair = children.get(key)
            if pair is None:
                pair = children[key] = (self._prompt.labels(model, ns), self._generated.labels(model, ns))
            pair[0].inc(prompt_tokens)
            pair[1].inc(completion_tokens)
        if timer is not None and timer.first:
            key = ("ttft", model)
            child = children.get(key)
            if child is None:
                child = children[key] = self._ttft.labels(model)
            child.observe(timer.first - timer.started)
            self._gaps.merge(model, timer)
        self.usage.add(key_prefix, namespace if ns != OTHER else OTHER, prompt_tokens, completion_tokens)

    def request_rejected(self, route: str, status: int) -> None:
        """Count a request answered before any node was involved (auth, validation, no node)."""
        key = (route, "", "", str(status))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(*key)
        child.inc()
        self._totals[0] += 1
        self._totals[1] += status >= 400

    def retried(self) -> None:
        self._retries.inc()

    def node_failure(self, kind: str, peer_id: str = "") -> None:
        """Count a failed or refused attempt; ``kind`` is one of ``NODE_FAILURE_KINDS``.

        Failures before or during a non-streamed answer also feed the per-node outage log (a
        broken stream reaches it through request_done, as a 502)."""
        child = self._failures.get(kind)
        if child is not None:
            child.inc()
        if peer_id and kind in ("before_head", "timeout", "mid_answer"):
            self.outages.failure(peer_id, kind.replace("_", " "))

    def served(self, failures: int) -> None:
        """An attempt succeeded (its head said 200) after ``failures`` failed ones."""
        if failures:
            self._failovers.inc()

    def refused(self, peer_id: str, answer: object) -> None:
        """A node answered an attempt with an error head; ``answer`` is what the dispatcher
        made of it: "busy", ("elsewhere", error) or the error the client gets."""
        if answer == "busy":
            self.node_failure("busy", peer_id)
            return
        error = answer[1] if isinstance(answer, tuple) else answer
        code, status = getattr(error, "code", None), getattr(error, "status", 0)
        if code == "model_not_found":
            self.node_failure("model_not_found", peer_id)
        elif code == "unsupported_route":
            self.node_failure("unsupported_route", peer_id)
        elif code == "node_failure":
            self.node_failure("before_head", peer_id)
        elif isinstance(status, int) and status >= 500:
            self._failures["backend_error"].inc()
            self.outages.failure(peer_id, f"backend error {status} {code or ''}".rstrip())

    # ---- exposition --------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format of everything above."""
        return generate_latest(self.prometheus)

    def totals(self) -> dict[str, int]:
        """Cumulative request and token counts, for the dashboard's client-side rates."""
        return dict(
            zip(("requests", "errors", "prompt_tokens", "generation_tokens"), self._totals, strict=True)
        )


class _GapCollector(Collector):
    def __init__(self, gaps: _GapHistogram) -> None:
        self._gaps = gaps

    def collect(self) -> Iterable[Metric]:
        yield self._gaps.collect()


__all__ = ["GAP_BUCKETS", "MAX_LABEL_VALUES", "MAX_NODE_SERIES", "GatewayMetrics", "StreamTimer"]
