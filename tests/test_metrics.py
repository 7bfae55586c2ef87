"""Prometheus /metrics on a real gateway and real nodes: scraped with prometheus-client's own
parser, the counters and histograms move exactly as the requests made here say they must,
including a retry after a node is killed mid-answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import procs as _procs
from tests._wait import until
from tests.conftest import wait_for_models

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    r = httpx.get(url, headers=headers, timeout=10, trust_env=False)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _upstream(tmp, name: str) -> tuple[_procs.Proc, str]:
    return _procs.start_backend("tests.standins.openai_upstream", tmp / f"{name}.log", "--model", "m")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("metrics")
    ups = [_upstream(tmp, f"up{i}") for i in range(2)]
    gw = _procs.start_gateway(tmp, auth="open")
    node_ports = [_procs.free_port() for _ in ups]
    nodes = [
        _procs.start_node(
            tmp,
            f"n{i}",
            gateways=[gw],
            backend={"type": "openai", "base_url": url},
            extra={"metrics": {"listen": f"127.0.0.1:{port}"}},
        )
        for i, ((_, url), port) in enumerate(zip(ups, node_ports, strict=True))
    ]
    wait_for_models(gw.base_url, {"m"})
    until(lambda: value(scrape(gw.http + "/metrics"), "tooti_gateway_nodes", state="live") == 2)
    yield {
        "gw": gw,
        "nodes": nodes,
        "ups": ups,
        "node_metrics": [f"http://127.0.0.1:{p}/metrics" for p in node_ports],
        "tmp": tmp,
    }
    for p in [*(n.proc for n in nodes), gw.proc, *(u for u, _ in ups)]:
        p.stop()


def test_requests_tokens_and_latencies_counted_exactly(net: dict) -> None:
    gw = net["gw"]
    url = gw.http + "/metrics"
    before = scrape(url)
    nodes_before = [scrape(u) for u in net["node_metrics"]]
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    generated = prompt = 0
    for i in range(3):
        out = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": f"whole {i}"}],
            extra_body={"x_fake": {"tokens": 4}},
        )
        assert out.usage is not None
        generated += out.usage.completion_tokens
        prompt += out.usage.prompt_tokens
    for i in range(2):
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": f"stream {i}"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"x_fake": {"tokens": 6, "delay_ms": 5}},
        )
        for chunk in stream:
            if chunk.usage is not None:
                generated += chunk.usage.completion_tokens
                prompt += chunk.usage.prompt_tokens
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("tooti_gateway_requests_total", route="chat", model="m", namespace="", status="200") == 5
    assert delta("tooti_gateway_requests_total", route="chat", status="404") == 1
    assert delta("tooti_gateway_e2e_request_latency_seconds_count", route="chat", model="m") == 5
    assert delta("tooti_gateway_time_to_first_token_seconds_count", model="m") == 2
    gaps = delta("tooti_gateway_inter_token_latency_seconds_count", model="m")
    assert 1 <= gaps <= 2 * 8  # one per delivery after the first; the relay may coalesce tokens
    inf = delta("tooti_gateway_inter_token_latency_seconds_bucket", model="m", le="+Inf")
    assert inf == gaps
    assert (
        delta("tooti_gateway_generation_tokens_total", model="m", namespace="") == generated == 3 * 4 + 2 * 6
    )
    assert delta("tooti_gateway_prompt_tokens_total", model="m", namespace="") == prompt > 0
    # A TTFT of a stream that arrived is positive and below its whole latency.
    assert 0 < delta("tooti_gateway_time_to_first_token_seconds_sum", model="m")
    # The nodes' own /metrics agree on what they served.
    nodes_after = [scrape(u) for u in net["node_metrics"]]
    served = sum(
        value(a, "tooti_node_requests_served_total") - value(b, "tooti_node_requests_served_total")
        for a, b in zip(nodes_after, nodes_before, strict=True)
    )
    assert served == 5
    for n in nodes_after:
        assert value(n, "tooti_node_capacity") == 4
        assert value(n, "tooti_node_gateways_joined") == 1
    # Per-node series, read from the registry at scrape time.
    for node in net["nodes"]:
        assert value(after, "tooti_gateway_node_up", node=node.peer_id, namespace="") == 1
        assert value(after, "tooti_gateway_node_capacity", node=node.peer_id, namespace="") == 4
    # Heartbeats come every second; the first may not have arrived yet.
    until(lambda: total(scrape(url), "tooti_gateway_heartbeats_received_total") > 0)


def test_node_metrics_serves_only_metrics(net: dict) -> None:
    base = net["node_metrics"][0].removesuffix("/metrics")
    assert httpx.get(base + "/other", trust_env=False).status_code == 404


def test_retry_failover_and_killed_node(net: dict) -> None:
    gw = net["gw"]
    url = gw.http + "/metrics"
    before = scrape(url)
    stats = [f"{u}/_stats" for _, u in net["ups"]]
    active_before = [httpx.get(s, trust_env=False).json()["active"] for s in stats]
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "slow"}],
        "x_fake": {"tokens": 300, "delay_ms": 10},  # a 3 s non-streamed answer
    }
    with httpx.Client(trust_env=False, timeout=60) as http:
        # The request runs in a thread while this one finds the node serving it and kills it.
        result: dict[str, httpx.Response] = {}
        t = threading.Thread(
            target=lambda: result.setdefault("r", http.post(gw.base_url + "/chat/completions", json=body))
        )
        t.start()
        serving: list[int] = []

        def busy_upstream() -> bool:
            serving[:] = [
                i
                for i, s in enumerate(stats)
                if httpx.get(s, trust_env=False).json()["active"] > active_before[i]
            ]
            return bool(serving)

        until(busy_upstream)
        victim = net["nodes"][serving[0]]
        victim.proc.kill()
        t.join(60)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.headers["x-tooti-node"] != victim.peer_id
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("tooti_gateway_retries_total") == 1
    assert delta("tooti_gateway_failovers_total") == 1
    # The node died before its head or during the answer, depending on when the adapter
    # sends the head; either way exactly one failure, of one of those two kinds.
    assert (
        delta("tooti_gateway_node_failures_total", kind="before_head")
        + delta("tooti_gateway_node_failures_total", kind="mid_answer")
        == 1
    )
    assert delta("tooti_gateway_node_failures_total") == 1
    assert delta("tooti_gateway_requests_total", route="chat", model="m", status="200") == 1
    # The dead node's connection closed, so it is gone from the registry at once.
    until(lambda: value(scrape(url), "tooti_gateway_nodes", state="live") == 1)
    assert value(scrape(url), "tooti_gateway_node_up", node=victim.peer_id, namespace="") == 0
