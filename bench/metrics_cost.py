"""What the gateway's request metrics cost: per request and per token, in-process.

    python -m bench.metrics_cost [--requests 20000] [--tokens 200] [--repeats 5]

Drives exactly the calls the request path makes (``admin_http.request_done`` once per
request: outage bookkeeping, the access-log check, label lookups, counters and histograms;
``StreamTimer.tick`` once per delivered block; the dispatcher's retry/failure counters are
not on the common path and are not included) against a registry holding 20 live nodes, and reports the best of ``--repeats`` runs (the machine is
shared; the minimum is the cost, the rest is other load). A scrape is timed too: it runs on
the gateway's event loop, so its cost is paid every scrape interval, not per request.
Writes bench/results/metrics-cost.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from tooti.gateway import admin_http
from tooti.gateway.metrics import GatewayMetrics, StreamTimer
from tooti.gateway.registry import Registry
from tooti.wire import pb


class _Usage(NamedTuple):
    prompt_tokens: int
    completion_tokens: int


def _registry(n: int) -> Registry:
    reg = Registry(ttl=15)
    for i in range(n):
        ann = pb.Announcement(
            name=f"n{i}", models=[pb.ModelInfo(name="m")], capacity=8, backend_healthy=True, seq=1
        )
        reg.update(f"peer{i}", ann)
    return reg


def _done(gw: Any, started: float, tokens: int, timer: StreamTimer | None) -> None:
    admin_http.request_done(
        gw,
        route="chat",
        request_id="req_x",
        model="m",
        key=None,
        node="peer0",
        namespace="",
        status=200,
        started=started,
        usage=_Usage(12, tokens),
        timer=timer,
    )


def _per_request(gw: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        _done(gw, started, 200, None)
    return (time.perf_counter() - started) / n


def _per_stream(gw: Any, n: int, tokens: int) -> tuple[float, float]:
    """(per-request cost of a stream's bookkeeping, per-token cost of tick)."""
    metrics = gw.dispatcher.metrics
    t0 = time.perf_counter()
    for _ in range(n):
        timer = metrics.stream_timer(t0)
        for _ in range(tokens):
            timer.tick()
    ticks = (time.perf_counter() - t0) / (n * tokens)
    timer = metrics.stream_timer(time.perf_counter())
    for _ in range(tokens):
        timer.tick()
    t2 = time.perf_counter()
    for _ in range(n):
        _done(gw, t2, tokens, timer)
    return (time.perf_counter() - t2) / n, ticks


def _empty_loop(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        pass
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    registry = _registry(20)
    metrics = GatewayMetrics(registry)
    gw = SimpleNamespace(dispatcher=SimpleNamespace(metrics=metrics), registry=registry)
    whole, stream, tick, scrape = [], [], [], []
    for _ in range(args.repeats):
        whole.append(_per_request(gw, args.requests))
        s, t = _per_stream(gw, args.requests // 10, args.tokens)
        stream.append(s)
        tick.append(t - _empty_loop(args.requests))
        t0 = time.perf_counter()
        body = metrics.exposition()
        scrape.append(time.perf_counter() - t0)
    result = {
        "per_request_us_non_streamed": round(min(whole) * 1e6, 2),
        "per_request_us_streamed": round(min(stream) * 1e6, 2),
        "per_token_us": round(min(tick) * 1e6, 3),
        "scrape_ms_20_nodes": round(min(scrape) * 1e3, 2),
        "scrape_bytes": len(body),
        "requests": args.requests,
        "tokens_per_stream": args.tokens,
        "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "metrics-cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
