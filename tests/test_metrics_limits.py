"""The bounds on the gateway's metrics, crossed in-process: label values from hostile peers
and clients cannot grow the number of series (or the dashboard's usage window) without limit.
"""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tooti.gateway import metrics as gm
from tooti.gateway._usage_window import MAX_SERIES, UsageWindow
from tooti.gateway.registry import Registry
from tooti.wire import pb


def _registry(nodes: int, models_per_node: int = 1) -> Registry:
    reg = Registry(ttl=15)
    for i in range(nodes):
        models = [pb.ModelInfo(name=f"m{i}-{j}") for j in range(models_per_node)]
        ann = pb.Announcement(name=f"\x1b[2Jnode{i}", models=models, capacity=2, backend_healthy=True, seq=1)
        reg.update(f"peer{i:04d}", ann)
    return reg


def _series(metrics: gm.GatewayMetrics, name: str) -> list[dict[str, str]]:
    text = metrics.exposition().decode()
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def _done(metrics: gm.GatewayMetrics, entry, model: str, namespace: str = "") -> None:  # type: ignore[no-untyped-def]
    metrics.request_done(
        route="chat",
        model=model,
        namespace=namespace,
        entry=entry,
        key_prefix="k",
        status=200,
        started=time.perf_counter(),
        prompt_tokens=1,
        completion_tokens=1,
    )


def test_per_node_series_are_capped() -> None:
    reg = _registry(gm.MAX_NODE_SERIES + 100)
    metrics = gm.GatewayMetrics(reg)
    up = _series(metrics, "tooti_gateway_node_up")
    assert len(up) == gm.MAX_NODE_SERIES
    info = _series(metrics, "tooti_gateway_node_info")
    assert all("\x1b" not in s["name"] for s in info)  # peer-chosen names are made printable
    # The node counts still cover every node.
    (live,) = [s for s in _series(metrics, "tooti_gateway_nodes") if s["state"] == "live"]
    assert live == {"state": "live"}


def test_model_labels_are_bounded_and_must_be_served() -> None:
    reg = _registry(1, models_per_node=gm.MAX_LABEL_VALUES + 50)
    metrics = gm.GatewayMetrics(reg)
    entry = next(iter(reg.all()))
    for j in range(gm.MAX_LABEL_VALUES + 50):
        _done(metrics, entry, f"m0-{j}")
    _done(metrics, entry, "a-model-the-node-never-announced")
    models = {s["model"] for s in _series(metrics, "tooti_gateway_requests_total")}
    assert len(models) == gm.MAX_LABEL_VALUES + 1
    assert gm.OTHER in models and "a-model-the-node-never-announced" not in models
    # Requests rejected before any node are counted without a model label at all.
    metrics.request_rejected("chat", 401)
    assert {"route": "chat", "model": "", "namespace": "", "status": "401"} in _series(
        metrics, "tooti_gateway_requests_total"
    )


def test_namespace_label_must_be_a_live_namespace() -> None:
    reg = Registry(ttl=15)
    reg.update(
        "p", pb.Announcement(namespace="acme", models=[pb.ModelInfo(name="m")], backend_healthy=True, seq=1)
    )
    metrics = gm.GatewayMetrics(reg)
    entry = reg.get("p")
    _done(metrics, entry, "acme:m", "acme")
    _done(metrics, entry, "m", "made-up")
    labels = _series(metrics, "tooti_gateway_requests_total")
    assert {(s["model"], s["namespace"]) for s in labels} == {("m", "acme"), ("m", gm.OTHER)}


def test_usage_window_is_bounded() -> None:
    now = [1_000_000.0]
    window = UsageWindow(clock=lambda: now[0])
    for i in range(MAX_SERIES + 30):
        window.add(f"key{i}", "", 1, 2)
    series = window.snapshot()["series"]
    assert isinstance(series, list) and len(series) == MAX_SERIES
    other = next(s for s in series if s["key"] == "other")
    assert sum(other["requests"]) == 31  # everything past the 49 keys that got a row
    # An hour later the old series age out and make room again.
    now[0] += 3700
    window.add("fresh", "", 1, 1)
    keys = [s["key"] for s in window.snapshot()["series"]]
    assert keys == ["fresh"]
