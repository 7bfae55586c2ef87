"""1,000 concurrent open streams through one tooti gateway and one node.

    python -m bench.scale [--streams 1000] [--tokens 50] [--delay-ms 200]

A fake upstream sends each stream ``tokens`` tokens ``delay_ms`` apart (~10 s by default), so all
streams are open at the same time. The node's max_concurrency is set above ``streams`` (the bound
under test is the transport, not the node's own admission limit). Counted: errors (connection
failures, non-200 answers, streams without all their tokens or without ``[DONE]``), stalls (a
stream that went more than ``--stall-s`` seconds without a token, or before its first one), the
most streams open at once, and the gateway's and node's RSS sampled every 250 ms. Every request
loop is bounded; the run ends by itself after at most ``--limit-s`` seconds.

Writes bench/results/scale-<timestamp>.json and scale-latest.json (read by bench.run for the doc).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bench import driver, report
from bench.targets import BENCH, VENV, Tooti, Upstream, cpu_seconds, memory_mb
from tooti.wire import MAX_CONCURRENCY

RESULTS = BENCH / "results"


async def run(args: argparse.Namespace, tooti: Tooti, upstream: Upstream) -> dict[str, Any]:
    body = json.dumps(
        {
            "model": "fake",
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": args.tokens,
            "stream": True,
            "x_fake": {"tokens": args.tokens, "delay_ms": args.delay_ms},
        }
    ).encode()
    raw = driver.build_request("127.0.0.1", tooti.port, "/v1/chat/completions", body)
    errors: Counter[str] = Counter()
    first_errors: list[str] = []
    stalled = completed = opened = 0
    open_now = peak_open = 0
    max_gap = 0.0
    rss: dict[str, list[float]] = {"gateway": [], "node": []}
    # Cores used by the gateway and the node in each second of the run: shows whether the
    # stream set-up burst or the steady relay is what saturates the machine.
    cpu_timeline: list[tuple[float, float, float]] = []
    first_token_s: list[float] = []
    durations: list[float] = []

    def error(kind: str) -> None:
        errors[kind] += 1
        if len(first_errors) < 10:
            first_errors.append(kind)

    async def sampler() -> None:
        last = (time.perf_counter(), cpu_seconds([tooti.gw_pid]), cpu_seconds([tooti.node_pid]))
        for tick in range(1, 1 << 30):
            rss["gateway"].append(memory_mb([tooti.gw_pid])["rss_mb"])
            rss["node"].append(memory_mb([tooti.node_pid])["rss_mb"])
            await trio.sleep(0.25)
            if tick % 4 == 0:
                now = (time.perf_counter(), cpu_seconds([tooti.gw_pid]), cpu_seconds([tooti.node_pid]))
                span = now[0] - last[0]
                cpu_timeline.append(
                    (
                        round(now[0] - t0, 1),
                        round((now[1] - last[1]) / span, 2),
                        round((now[2] - last[2]) / span, 2),
                    )
                )
                last = now

    async def one(i: int) -> None:
        nonlocal stalled, completed, opened, open_now, peak_open, max_gap
        await trio.sleep(i * args.ramp_s / args.streams)
        conn = driver.Conn("127.0.0.1", tooti.port)
        last = time.perf_counter()
        gap = 0.0
        began = False

        def progress(n: int, now: float) -> None:
            nonlocal last, gap, began, open_now, peak_open
            if not began:
                began = True
                open_now += 1
                peak_open = max(peak_open, open_now)
            gap = max(gap, now - last)
            last = now

        try:
            await conn.connect()
            opened += 1
            last = time.perf_counter()
            r = await conn.request(raw, stream=True, progress=progress)
            gap = max(gap, r.finished - last)
            if r.status != 200:
                error(f"HTTP {r.status}")
            elif r.tokens != args.tokens or not r.done:
                error(f"incomplete stream: {r.tokens}/{args.tokens} tokens, [DONE]={r.done}")
            else:
                completed += 1
                first_token_s.append(r.first_token - r.started if r.first_token else float("nan"))
                durations.append(r.finished - r.started)
        except trio.Cancelled:
            gap = max(gap, time.perf_counter() - last)
            error("still open at the time limit")
            raise
        except (driver.ConnectionLost, OSError) as exc:
            error(f"{type(exc).__name__}: {exc}"[:120])
        finally:
            if began:
                open_now -= 1
            if gap > args.stall_s:
                stalled += 1
            max_gap = max(max_gap, gap)
            await conn.aclose()

    profiled = trio.Event()

    async def profile() -> None:
        spies = [
            subprocess.Popen(
                [
                    str(VENV / "bin" / "py-spy"),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "100",
                    "--nonblocking",
                    "--duration",
                    str(int(args.profile_s)),
                    "--format",
                    "raw",
                    "--output",
                    str(RESULTS / f"profile-scale-{role}-collapsed.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in (("gateway", tooti.gw_pid), ("node", tooti.node_pid))
        ]
        for sp in spies:
            await trio.to_thread.run_sync(sp.wait)
        for role in ("gateway", "node"):
            report.top_table(
                RESULTS / f"profile-scale-{role}-collapsed.txt", RESULTS / f"profile-scale-{role}-top.txt"
            )
        profiled.set()

    gw_cpu0, node_cpu0 = cpu_seconds([tooti.gw_pid]), cpu_seconds([tooti.node_pid])
    t0 = time.perf_counter()
    async with trio.open_nursery() as outer:
        outer.start_soon(sampler)
        if args.profile_s:
            outer.start_soon(profile)
        with trio.move_on_after(args.limit_s):
            async with trio.open_nursery() as nursery:
                for i in range(args.streams):
                    nursery.start_soon(one, i)
        if args.profile_s:  # let py-spy finish (it stops by itself after --profile-s)
            with trio.move_on_after(args.profile_s + 10):
                await profiled.wait()
        outer.cancel_scope.cancel()
    wall = time.perf_counter() - t0
    stream_seconds = (args.tokens - 1) * args.delay_ms / 1000
    n_err = sum(errors.values())
    held = n_err == 0 and stalled == 0 and completed == args.streams
    verdict = (
        f"held: all {args.streams} streams completed, {peak_open} open at once"
        if held
        else f"NOT held: {completed}/{args.streams} completed, {n_err} errors, {stalled} stalls"
    )
    ftt = sorted(x for x in first_token_s if x == x)
    return {
        "streams": args.streams,
        "tokens": args.tokens,
        "delay_ms": args.delay_ms,
        "stall_s": args.stall_s,
        "stream_seconds": stream_seconds,
        "ramp_s": args.ramp_s,
        "wall_s": round(wall, 2),
        "connected": opened,
        "completed": completed,
        "errors": n_err,
        "error_kinds": dict(errors),
        "first_errors": first_errors,
        "stalled": stalled,
        "max_gap_s": round(max_gap, 3),
        "peak_open": peak_open,
        "first_token_p50_s": round(ftt[len(ftt) // 2], 3) if ftt else None,
        "first_token_max_s": round(ftt[-1], 3) if ftt else None,
        "duration_max_s": round(max(durations), 3) if durations else None,
        "gateway_peak_rss_mb": max(rss["gateway"]) if rss["gateway"] else None,
        "node_peak_rss_mb": max(rss["node"]) if rss["node"] else None,
        "gateway_cpu_s": round(cpu_seconds([tooti.gw_pid]) - gw_cpu0, 2),
        "node_cpu_s": round(cpu_seconds([tooti.node_pid]) - node_cpu0, 2),
        "held": held,
        "verdict": verdict,
        "cpu_timeline_s_gw_node": cpu_timeline,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--delay-ms", type=float, default=200.0)
    ap.add_argument("--ramp-s", type=float, default=2.0, help="spread the stream starts over this long")
    ap.add_argument("--stall-s", type=float, default=5.0)
    ap.add_argument("--limit-s", type=float, default=60.0, help="hard time limit for the streams")
    ap.add_argument(
        "--profile-s",
        type=float,
        default=0.0,
        help="py-spy the gateway and node for this many seconds from the start (needs bench/.venv-litellm)",
    )
    args = ap.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="tooti-scale-"))
    upstream = Upstream(tmp)
    tooti = None
    try:
        tooti = Tooti(tmp, upstream.url, max_concurrency=min(args.streams + 100, MAX_CONCURRENCY))
        before = {"gateway": memory_mb([tooti.gw_pid]), "node": memory_mb([tooti.node_pid])}
        out = trio.run(run, args, tooti, upstream)
        after = {"gateway": memory_mb([tooti.gw_pid]), "node": memory_mb([tooti.node_pid])}
        out["gateway_rss_before_mb"] = before["gateway"]["rss_mb"]
        out["node_rss_before_mb"] = before["node"]["rss_mb"]
        out["memory_after"] = after
        out["upstream_stats"] = upstream.stats()
        if out["errors"] or out["stalled"]:
            out["gateway_log_tail"] = tooti.gateway.proc.tail(30)
            out["node_log_tail"] = tooti.node.proc.tail(30)
    finally:
        if tooti is not None:
            tooti.stop()
        upstream.proc.stop()
    out["started"] = stamp
    out["command"] = "python -m bench.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    path = RESULTS / f"scale-{stamp}.json"
    path.write_text(json.dumps(out, indent=1))
    shutil.copyfile(path, RESULTS / "scale-latest.json")
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_tail")}, indent=1))
    return 0 if out["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
