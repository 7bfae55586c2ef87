"""What tooti adds on top of a real backend: llama.cpp (SmolLM2-135M, 1 thread) called directly
and through gateway -> libp2p -> node, interleaved request by request in one run.

    python -m bench.llama_overhead [--rounds 30]

Writes bench/results/llama-overhead.json and prints a table: time to first token (streaming)
and total latency (non-streaming, 16 tokens at temperature 0), p50 and p90 per target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from harness import procs as _procs

BODY = {
    "messages": [{"role": "user", "content": "Write one short sentence about the sea."}],
    "max_tokens": 16,
    "temperature": 0,
    "seed": 1,
}


def _ttft(client: httpx.Client, url: str, model: str) -> float:
    start = time.perf_counter()
    with client.stream("POST", url, json={**BODY, "model": model, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"' in line.replace(" ", ""):
                return time.perf_counter() - start
    raise RuntimeError("no token")


def _total(client: httpx.Client, url: str, model: str) -> float:
    start = time.perf_counter()
    r = client.post(url, json={**BODY, "model": model})
    r.raise_for_status()
    return time.perf_counter() - start


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tooti-llama-bench-"))
    llama, url = _procs.start_backend(
        "tooti.llamacpp", tmp / "llama.log", "--threads", "1", "--parallel", "2"
    )
    gw = _procs.start_gateway(tmp, auth="open")
    node = _procs.start_node(tmp, "n", gateways=[gw], backend={"type": "openai", "base_url": url})
    targets = {"direct": url + "/v1/chat/completions", "tooti": gw.base_url + "/chat/completions"}
    res: dict[str, dict[str, list[float]]] = {t: {"ttft": [], "total": []} for t in targets}
    try:
        with httpx.Client(trust_env=False, timeout=60) as client:
            for t, u in targets.items():  # warm-up
                _total(client, u, "smollm2")
                _ttft(client, u, "smollm2")
            for _ in range(args.rounds):
                for t, u in targets.items():
                    res[t]["ttft"].append(_ttft(client, u, "smollm2"))
                    res[t]["total"].append(_total(client, u, "smollm2"))
    finally:
        for p in (node.proc, gw.proc, llama):
            p.stop()
    out = {
        t: {
            k: {"p50_ms": _pct(v, 0.5), "p90_ms": _pct(v, 0.9), "mean_ms": statistics.mean(v) * 1000}
            for k, v in m.items()
        }
        for t, m in res.items()
    }
    out["added"] = {
        k: {"p50_ms": out["tooti"][k]["p50_ms"] - out["direct"][k]["p50_ms"]} for k in ("ttft", "total")
    }
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/llama-overhead.json").write_text(json.dumps(out, indent=2))
    print(
        f"{'':8} {'TTFT p50':>10} {'TTFT p90':>10} {'total p50':>10} {'total p90':>10}  (ms, {args.rounds} rounds)"
    )
    for t in targets:
        o = out[t]
        print(
            f"{t:8} {o['ttft']['p50_ms']:10.1f} {o['ttft']['p90_ms']:10.1f} {o['total']['p50_ms']:10.1f} "
            f"{o['total']['p90_ms']:10.1f}"
        )
    print(f"added    {out['added']['ttft']['p50_ms']:10.1f} {'':10} {out['added']['total']['p50_ms']:10.1f}")


if __name__ == "__main__":
    main()
