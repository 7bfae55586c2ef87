"""Relay capacity: how many tokens/s one gateway + one node carry when every token is its own chunk.

    .venv/bin/python -m bench.relay_capacity                     # all loads, direct and tooti, ~4 min
    .venv/bin/python -m bench.relay_capacity --loads 200x20 --profile-s 8   # one load, py-spy on both

The fake upstream (``tests/standins/openai_upstream.py``) streams one SSE event per HTTP chunk per
token, paced ``1000 / rate`` ms apart, like llama.cpp, vLLM and SGLang do. For each offered load
``streams x rate`` (tokens/s per stream) the same streams run against the upstream directly and
through tooti, one after the other, in one run:

* streams start evenly over ``--ramp-s``; each asks for enough tokens to outlast the measurement
  window, which starts when the last stream has started (plus 0.5 s) and lasts ``--window-s``;
* **delivered** = tokens that reached the driver inside the window / (streams x rate x window);
* **stalled** streams: the largest gap between two tokens (or between the request and its first
  token) is above ``2 x spacing + 1 s``;
* **errors**: a non-200 answer, a stream without all its tokens or without ``[DONE]``, a
  connection failure, or a stream still open ``--limit-s`` after the window;
* **CPU-ms per token** of each process (gateway, node, upstream, this driver) = its utime+stime
  from ``/proc`` over the window / tokens delivered in the window;
* the **knee** is the highest offered rate delivered at >= 0.97.

A light-load probe runs first for each target: non-streaming latency (16 tokens) and TTFT one
request at a time, and one 20 tok/s stream whose tokens' lateness against the upstream's own
drift-free schedule shows any buffering on the way ("a token reaches the client within 5 ms").

Results: ``bench/results/relay-<timestamp>.json`` and ``relay-latest.json``; with ``--profile-s``,
short top-N summaries ``relay-profile-<role>-top.txt`` (the raw py-spy stacks are deleted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bench import driver, report
from bench.relay_report import knees, write_doc
from bench.targets import BENCH, CLK_TCK, VENV, Tooti, Upstream, cpu_seconds, machine, wait_ok

RESULTS = BENCH / "results"
HOST = "127.0.0.1"
DEFAULT_LOADS = "100x20,125x20,200x20,300x20,500x20,200x50"


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def _body(tokens: int, delay_ms: float, *, stream: bool = True) -> bytes:
    return json.dumps(
        {
            "model": "fake",
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": tokens,
            "stream": stream,
            "x_fake": {"tokens": tokens, "delay_ms": delay_ms},
        }
    ).encode()


async def _upstream_idle(upstream: Upstream, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await trio.to_thread.run_sync(upstream.stats))["active"] == 0:
            return
        await trio.sleep(0.2)


async def load(
    port: int,
    pids: dict[str, int],
    streams: int,
    rate: float,
    *,
    ramp_s: float,
    window_s: float,
    limit_s: float,
    spread: bool = False,
) -> dict[str, Any]:
    """One offered load against the HTTP server on ``port``; see the module docstring."""
    spacing = 1.0 / rate
    w_start = ramp_s + 0.5
    w_end = w_start + window_s
    tokens = math.ceil(rate * (w_end + 1.0))
    raw = driver.build_request(HOST, port, "/v1/chat/completions", _body(tokens, 1000 * spacing))
    stall_gap = 2 * spacing + 1.0
    errors: Counter[str] = Counter()
    in_window = 0
    stalled = completed = stalled_mid = 0
    gaps: list[float] = []  # per stream: the longest gap between two tokens
    ttfts: list[float] = []  # per stream: request sent to first token
    cpu: dict[str, list[float]] = {}
    t0 = time.perf_counter()

    def cpu_now() -> dict[str, float]:
        now = {role: cpu_seconds([pid]) for role, pid in pids.items()}
        now["machine"] = _machine_busy_s()
        return now

    async def sampler() -> None:
        await trio.sleep_until(trio.current_time() + w_start)
        before = cpu_now()
        await trio.sleep(window_s)
        after = cpu_now()
        for role in before:
            cpu[role] = [before[role], after[role]]

    async def one(i: int) -> None:
        nonlocal in_window, stalled, completed, stalled_mid
        # Start times fix each stream's token phase (the upstream paces from a stream's start).
        # Evenly over the ramp, few distinct phases: many streams' tokens fall due together,
        # as in a batching GPU server where every running sequence advances each step.
        # Spread: a golden-ratio offset within one spacing gives every stream its own phase,
        # as independent backends would, and every token its own wake-up on each hop.
        offset = (i * 0.6180339887 % 1.0) * spacing if spread else 0.0
        await trio.sleep(i * ramp_s / streams + offset)
        conn = driver.Conn(HOST, port)
        last = time.perf_counter()
        gap = 0.0
        first: float | None = None

        def progress(n: int, now: float) -> None:
            nonlocal last, gap, in_window, first
            if first is None:
                first = now - last
            else:
                gap = max(gap, now - last)
            last = now
            if w_start <= now - t0 < w_end:
                in_window += n

        try:
            await conn.connect()
            last = time.perf_counter()
            r = await conn.request(raw, stream=True, progress=progress)
            if r.status != 200:
                errors[f"HTTP {r.status}"] += 1
            elif r.tokens != tokens or not r.done:
                errors["incomplete stream"] += 1
            else:
                completed += 1
        except trio.Cancelled:
            errors["still open at the time limit"] += 1
            if first is not None:
                gap = max(gap, time.perf_counter() - last)
            raise
        except (driver.ConnectionLost, OSError) as exc:
            errors[type(exc).__name__] += 1
        finally:
            ttfts.append(first if first is not None else time.perf_counter() - last)
            gaps.append(gap)
            stalled += max(gap, ttfts[-1]) > stall_gap
            stalled_mid += gap > stall_gap
            await conn.aclose()

    with trio.move_on_after(w_end + limit_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            for i in range(streams):
                nursery.start_soon(one, i)
    offered = streams * rate * window_s
    out: dict[str, Any] = {
        "streams": streams,
        "rate": rate,
        "offered_tok_s": streams * rate,
        "delivered": round(in_window / offered, 3),
        "delivered_tok_s": round(in_window / window_s),
        "completed": completed,
        "stalled": stalled,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "stalled_after_first_token": stalled_mid,
        "max_gap_s": round(max(gaps, default=0.0), 3),
        "max_ttft_s": round(max(ttfts, default=0.0), 3),
        "p50_ttft_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "p99_gap_s": round(sorted(gaps)[int(0.99 * (len(gaps) - 1))], 3) if gaps else None,
        "tokens_in_window": in_window,
    }
    machine_cpu = cpu.pop("machine", [0.0, 0.0])
    for role, (a, b) in cpu.items():
        out[f"cpu_ms_per_token_{role}"] = round(1000 * (b - a) / max(in_window, 1), 4)
        out[f"cores_{role}"] = round((b - a) / window_s, 2)
    ours = sum(b - a for a, b in cpu.values())
    # Everything else the machine ran meanwhile (other test runs share these cores).
    out["cores_other"] = round(max(0.0, machine_cpu[1] - machine_cpu[0] - ours) / window_s, 2)
    return out


async def requests_per_s(
    port: int, pids: dict[str, int], *, concurrency: int = 64, seconds: float = 4.0
) -> dict[str, Any]:
    """Non-streaming 16-token answers from ``concurrency`` connections back to back: requests/s
    and CPU-ms per request of each process (what one request's set-up costs)."""
    raw = driver.build_request(HOST, port, "/v1/chat/completions", _body(16, 0, stream=False))
    done = errors = 0
    stop = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal done, errors
        conn = driver.Conn(HOST, port)
        while trio.current_time() < stop:
            try:
                r = await driver.call(conn, raw)
            except (driver.ConnectionLost, OSError):
                errors += 1
                await conn.aclose()
                continue
            done += r.status == 200
            errors += r.status != 200
        await conn.aclose()

    before = {role: cpu_seconds([pid]) for role, pid in pids.items()}
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {"concurrency": concurrency, "rps": round(done / elapsed), "errors": errors}
    for role, pid in pids.items():
        out[f"cpu_ms_per_request_{role}"] = round(
            1000 * (cpu_seconds([pid]) - before[role]) / max(done, 1), 3
        )
    return out


async def light(port: int, n: int = 100) -> dict[str, Any]:
    """Latency one request at a time: non-streaming total, TTFT, and per-token lateness."""
    conn = driver.Conn(HOST, port)
    await conn.connect()
    whole = driver.build_request(HOST, port, "/v1/chat/completions", _body(16, 0, stream=False))
    first = driver.build_request(HOST, port, "/v1/chat/completions", _body(4, 0))
    lat, ttft = [], []
    for _ in range(n):
        r = await driver.call(conn, whole)
        lat.append(1000 * (r.finished - r.started))
        r = await driver.call(conn, first, stream=True)
        if r.first_token is not None:
            ttft.append(1000 * (r.first_token - r.started))
    # 60 tokens at 20/s: each token's arrival minus (first arrival + i x 50 ms). The upstream sends
    # on a drift-free schedule, so any relay buffering shows as lateness growing past 0.
    arrivals: list[float] = []
    paced = driver.build_request(HOST, port, "/v1/chat/completions", _body(60, 50.0))
    await conn.request(paced, stream=True, progress=lambda k, now: arrivals.extend([now] * k))
    await conn.aclose()
    late = [1000 * (t - arrivals[0] - i * 0.05) for i, t in enumerate(arrivals)]
    return {
        "latency_p50_ms": round(statistics.median(lat), 3),
        "ttft_p50_ms": round(statistics.median(ttft), 3),
        "token_lateness_p50_ms": round(statistics.median(late), 3),
        "token_lateness_max_ms": round(max(late), 3),
    }


def _profile_start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    # py-spy is a bench-only tool: on PATH, beside this Python, or in the bench venv bench.run makes.
    found = [
        shutil.which("py-spy"),
        str(Path(sys.executable).parent / "py-spy"),
        str(VENV / "bin" / "py-spy"),
    ]
    spy = next((c for c in found if c and Path(c).exists()), None)
    if spy is None:
        print("py-spy not found (pip install py-spy, or run bench.run once); no profile", flush=True)
        return None
    cmd = [spy, "record", "--nonblocking", "--rate", "200", "--format", "raw"]
    cmd += ["--duration", str(int(seconds)), "--pid", str(pid), "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _print_row(target: str, r: dict[str, Any]) -> None:
    cpu = " ".join(
        f"{k.removeprefix('cpu_ms_per_token_')}={v}" for k, v in r.items() if k.startswith("cpu_ms")
    )
    print(
        f"  {target:6} {r['streams']:4}x{r['rate']:<3g} offered {r['offered_tok_s']:>6,.0f}/s: "
        f"delivered {r['delivered']:.3f} stalled {r['stalled']} ({r['stalled_after_first_token']} after the "
        f"first token) errors {r['errors']} max gap {r['max_gap_s']} s, TTFT max {r['max_ttft_s']} s; "
        f"CPU-ms/token {cpu}; others {r['cores_other']} cores",
        flush=True,
    )


async def run(args: argparse.Namespace, upstream: Upstream, tooti: Tooti) -> dict[str, Any]:
    targets = {
        "direct": (upstream.port, {"upstream": upstream.proc.popen.pid, "driver": os.getpid()}),
        "tooti": (
            tooti.port,
            {
                "gateway": tooti.gw_pid,
                "node": tooti.node_pid,
                "upstream": upstream.proc.popen.pid,
                "driver": os.getpid(),
            },
        ),
    }
    out: dict[str, Any] = {"light": {}, "loads": []}
    out["requests"] = {}
    for name, (port, pids) in targets.items():
        out["light"][name] = await light(port)
        print(f"  light {name}: {out['light'][name]}", flush=True)
        out["requests"][name] = await requests_per_s(port, pids)
        print(f"  non-streaming c=64 {name}: {out['requests'][name]}", flush=True)
    for spec in args.loads.split(","):
        streams, rate = (float(x) for x in spec.lower().split("x"))
        row: dict[str, Any] = {"load": spec}
        for name, (port, pids) in targets.items():
            await _upstream_idle(upstream)
            spies = []
            if args.profile_s and name == "tooti":
                for role in ("gateway", "node"):
                    raw = RESULTS / f"relay-profile-{role}.raw"
                    spy = _profile_start(pids[role], args.profile_s, raw)
                    if spy is not None:
                        spies.append((role, raw, spy))
            row[name] = await load(
                port,
                pids,
                int(streams),
                rate,
                ramp_s=args.ramp_s,
                window_s=args.window_s,
                limit_s=args.limit_s,
                spread=args.phases == "spread",
            )
            for role, raw, spy in spies:
                _, err = await trio.to_thread.run_sync(spy.communicate)
                if spy.returncode:
                    print(f"  py-spy on {role} failed: {err.decode(errors='replace')[-300:]}", flush=True)
                suffix = "" if args.http_server == "tooti" else f"-{args.http_server}"
                top = RESULTS / f"relay-profile-{role}{suffix}-top.txt"
                row.setdefault("profile", {})[role] = report.top_table(raw, top, n=25)
                raw.unlink(missing_ok=True)  # megabytes of stacks; the top-N summary is what is kept
            _print_row(name, row[name])
        out["loads"].append(row)
    others = [r[name]["cores_other"] for r in out["loads"] for name in targets]
    out["other_cores"] = round(sum(others) / max(len(others), 1), 2)
    for name in targets:
        out[f"knee_{name}_tok_s"], out[f"sustained_{name}_tok_s"] = knees(out["loads"], name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.relay_capacity", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--loads", default=DEFAULT_LOADS, help=f"streams x tok/s, comma-separated ({DEFAULT_LOADS})"
    )
    ap.add_argument("--window-s", type=float, default=8.0)
    ap.add_argument("--ramp-s", type=float, default=2.0)
    ap.add_argument("--limit-s", type=float, default=30.0)
    ap.add_argument("--profile-s", type=float, default=0.0, help="py-spy gateway and node for this long")
    ap.add_argument("--label", default="", help="a note stored in the result (e.g. 'before')")
    ap.add_argument(
        "--phases",
        choices=("aligned", "spread"),
        default="aligned",
        help="token phases across streams: aligned (streams started evenly over the ramp; "
        "tokens of many streams fall due together, like a batching server) or spread (each "
        "stream its own phase)",
    )
    ap.add_argument(
        "--http-server",
        choices=("tooti", "hypercorn"),
        default="tooti",
        help="the gateway's HTTP server (gateway.http_server), to compare the two",
    )
    ap.add_argument(
        "--doc",
        nargs="+",
        metavar="LABEL=RESULT.json",
        help="only rewrite docs/performance.md's relay table from these results, then exit",
    )
    ap.add_argument("--doc-block", default="relay", help="which marked block of the doc --doc rewrites")
    args = ap.parse_args(argv)
    if args.doc:
        runs = [(label, json.loads(Path(f).read_text())) for label, f in (a.split("=", 1) for a in args.doc)]
        write_doc(runs, BENCH.parent / "docs" / "performance.md", block_name=args.doc_block)
        return 0
    RESULTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tooti-relay-"))
    started = time.time()
    upstream = Upstream(tmp, tokens=16)
    out: dict[str, Any] = {}
    out_lines: list[str] = []
    try:
        tooti = Tooti(tmp, upstream.url, max_concurrency=2048, http_server=args.http_server)
        wait_ok(upstream.url + "/health", None, 10, "upstream")
        try:
            print(f"relay capacity: loads {args.loads}, window {args.window_s} s", flush=True)
            out = trio.run(run, args, upstream, tooti)
            print(f"  other processes on the machine: {out['other_cores']} cores", flush=True)
        finally:
            tooti.stop()
            # The node logs, per tunnel, how many frames its writes carried: the coalescing.
            out_lines = [
                line.split("tunnel from", 1)[1].strip()
                for log in tmp.rglob("node.log")
                for line in log.read_text(errors="replace").splitlines()
                if "frames in" in line
            ]
    finally:
        upstream.proc.stop()
    out["node_tunnels"] = out_lines
    out["label"] = args.label
    out["http_server"] = args.http_server
    out["phases"] = args.phases
    out["machine"] = machine()
    out["load_average_after"] = os.getloadavg()
    out["seconds"] = round(time.time() - started, 1)
    out["args"] = vars(args)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    text = json.dumps(out, indent=1)
    (RESULTS / f"relay-{stamp}.json").write_text(text)
    (RESULTS / "relay-latest.json").write_text(text)
    print(
        f"knee: direct {out['knee_direct_tok_s']:,.0f} tok/s, tooti {out['knee_tooti_tok_s']:,.0f} tok/s; "
        f"every lower rate too: direct {out['sustained_direct_tok_s']:,.0f}, tooti {out['sustained_tooti_tok_s']:,.0f}"
    )
    print(f"results: bench/results/relay-{stamp}.json ({out['seconds']} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
