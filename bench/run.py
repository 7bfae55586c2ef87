"""tooti's benchmark: direct vs tooti vs LiteLLM against one fast fake OpenAI upstream.

    python -m bench.run            # full run, ~8-10 minutes
    python -m bench.run --quick    # ~2 minutes, fewer rounds and shorter phases

Everything runs on 127.0.0.1. One fake upstream (tests/standins/openai_upstream.py, 1,000 tokens
by default, requests cap it with ``max_tokens``) serves three targets:

* ``direct``  - the upstream itself;
* ``tooti``   - one gateway (``auth: open``) and one node (max_concurrency 512) relaying to it;
* ``litellm`` - LiteLLM proxy (pinned, in bench/.venv-litellm), one worker, model ``fake`` ->
  ``openai/fake`` at the upstream.

Each phase runs in rounds, and each round runs direct, tooti, litellm in turn, so drift on the
machine hits the three alike; the "added" figures are target minus direct from the same run.
Results go to bench/results/<timestamp>.json and latest.json; ``--doc`` (default on) rewrites
docs/performance.md and its chart from them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench import driver, report
from bench.targets import (
    BENCH,
    LITELLM_VERSION,
    VENV,
    LiteLLM,
    Tooti,
    Upstream,
    children,
    cpu_seconds,
    machine,
    memory_mb,
)

RESULTS = BENCH / "results"
HOST = "127.0.0.1"
ORDER = ("direct", "tooti", "litellm")


@dataclass
class Plan:
    rounds_latency: int
    per_round_latency: int
    rounds_rps: int
    rps_seconds: float
    rounds_ttft: int
    per_round_ttft: int
    rounds_chunk: int
    per_round_chunk: int
    rounds_tps: int
    tps_seconds: float
    tps_levels: tuple[int, ...] = (16, 64, 256)
    rps_concurrency: int = 64
    profile_seconds: float = 8.0


FULL = Plan(
    rounds_latency=8,
    per_round_latency=40,
    rounds_rps=4,
    rps_seconds=6.0,
    rounds_ttft=8,
    per_round_ttft=30,
    rounds_chunk=5,
    per_round_chunk=4,
    rounds_tps=3,
    tps_seconds=5.0,
    profile_seconds=10.0,
)
QUICK = Plan(
    rounds_latency=4,
    per_round_latency=50,
    rounds_rps=2,
    rps_seconds=3.0,
    rounds_ttft=4,
    per_round_ttft=25,
    rounds_chunk=2,
    per_round_chunk=2,
    rounds_tps=1,
    tps_seconds=3.0,
    profile_seconds=4.0,
)


def body(max_tokens: int, stream: bool) -> bytes:
    return json.dumps(
        {
            "model": "fake",
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": max_tokens,
            "stream": stream,
        },
        separators=(",", ":"),
    ).encode()


@dataclass
class Target:
    name: str
    port: int
    procs: dict[str, list[int]]  # role -> pids whose CPU is charged to this target
    conns: list[driver.Conn] = field(default_factory=list)

    def raw(self, max_tokens: int, stream: bool) -> bytes:
        return driver.build_request(HOST, self.port, "/v1/chat/completions", body(max_tokens, stream))

    async def reopen(self, n: int) -> None:
        """Fresh keep-alive connections for the next timed round (untimed): servers close idle
        ones after a few seconds, and the other targets' rounds take longer than that."""
        for c in self.conns:
            await c.aclose()
        self.conns = [driver.Conn(HOST, self.port) for _ in range(n)]
        async with trio.open_nursery() as nursery:
            for c in self.conns:
                nursery.start_soon(c.connect)


class Meter:
    """CPU seconds of each role's processes, the upstream and the driver over a measured span."""

    def __init__(self, target: Target, upstream_pid: int) -> None:
        self.target, self.upstream_pid = target, upstream_pid

    def __enter__(self) -> Meter:
        self.t0 = time.perf_counter()
        self.c0 = {r: cpu_seconds(p) for r, p in self.target.procs.items()}
        self.u0 = cpu_seconds([self.upstream_pid])
        self.d0 = time.process_time()
        self.s0 = system_busy()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = {r: cpu_seconds(p) - self.c0[r] for r, p in self.target.procs.items()}
        self.upstream = cpu_seconds([self.upstream_pid]) - self.u0
        self.driver = time.process_time() - self.d0
        s1 = system_busy()
        self.busy = (s1[0] - self.s0[0]) - (s1[1] - self.s0[1])


class Acc:
    """Accumulates one (phase, target) cell over rounds."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.extra: list[float] = []
        self.requests = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.tokens = 0
        self.wall = 0.0
        self.cpu: dict[str, float] = {}
        self.upstream_cpu = 0.0
        self.driver_cpu = 0.0
        self.busy = 0.0
        self.rates: list[float] = []

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def metered(self, m: Meter) -> None:
        self.wall += m.wall
        for r, v in m.cpu.items():
            self.cpu[r] = self.cpu.get(r, 0.0) + v
        self.upstream_cpu += m.upstream
        self.driver_cpu += m.driver
        self.busy += m.busy


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _kind(exc: BaseException) -> str:
    return type(exc).__name__ + (f": {exc}"[:80] if str(exc) else "")


# ------------------------------------------------------------------------------------------ phases


async def sequential(t: Target, raw: bytes, n: int, acc: Acc, *, stream: bool, expect_tokens: int) -> None:
    """``n`` requests one after another on one connection; samples are ms (latency, or TTFT for a
    stream, with the rest of the stream's time per token in ``extra``)."""
    await t.reopen(1)
    conn = t.conns[0]
    for _ in range(n):
        try:
            r = await driver.call(conn, raw, stream=stream)
        except (driver.ConnectionLost, OSError) as exc:
            acc.error(_kind(exc))
            await conn.connect()
            continue
        acc.requests += 1
        if r.status != 200:
            acc.error(f"HTTP {r.status}")
            continue
        if stream:
            if r.tokens != expect_tokens or not r.done or r.first_token is None:
                acc.error(f"incomplete stream ({r.tokens}/{expect_tokens} tokens, done={r.done})")
                continue
            acc.samples.append((r.first_token - r.started) * 1000)
            acc.extra.append((r.finished - r.first_token) * 1000 / expect_tokens)
            acc.tokens += r.tokens
        else:
            acc.samples.append((r.finished - r.started) * 1000)


async def closed_loop(
    t: Target, raw: bytes, concurrency: int, seconds: float, acc: Acc, *, stream: bool, expect_tokens: int
) -> tuple[int, int, float]:
    """``concurrency`` workers, each sending back to back on its own connection.

    Non-streaming: no request is started after ``seconds``; those under way are finished and
    counted, and the elapsed time runs to the last one's end. Streaming: everything is cut off at
    ``seconds`` (a slow proxy can take far longer than the round for one 200-token stream); the
    tokens received until then count, and streams under way are closed. Returns (completed
    requests, tokens, elapsed seconds)."""
    await t.reopen(concurrency)
    done = 0
    tokens = 0
    start = time.perf_counter()
    deadline = start + seconds
    last_end = start

    async def worker(conn: driver.Conn) -> None:
        nonlocal done, tokens, last_end
        while time.perf_counter() < deadline:
            conn.busy = True
            try:
                r = await driver.call(conn, raw, stream=stream)
            except (driver.ConnectionLost, OSError) as exc:
                conn.busy = False
                acc.error(_kind(exc))
                try:
                    await conn.connect()
                except OSError as exc2:
                    acc.error(_kind(exc2))
                    await trio.sleep(0.05)
                continue
            conn.busy = False
            acc.requests += 1
            last_end = max(last_end, r.finished)
            if r.status != 200:
                acc.error(f"HTTP {r.status}")
                continue
            if stream and (r.tokens != expect_tokens or not r.done):
                acc.error(f"incomplete stream ({r.tokens}/{expect_tokens} tokens, done={r.done})")
                tokens += r.tokens
                continue
            done += 1
            tokens += r.tokens
            acc.samples.append((r.finished - r.started) * 1000)

    async with trio.open_nursery() as nursery:
        for c in t.conns:
            nursery.start_soon(worker, c)
        if stream:
            await trio.sleep_until(trio.current_time() + (deadline - time.perf_counter()))
            nursery.cancel_scope.cancel()
    if stream:
        for c in t.conns:
            if c.busy:
                tokens += c.live_tokens
                await c.aclose()
        return done, tokens, seconds
    return done, tokens, max(last_end, deadline) - start


async def settle(upstream: Upstream, timeout: float = 20.0) -> None:
    """Wait until the upstream has no request in progress (the previous target's cut-off streams
    have been torn down end to end) before the next measurement."""
    with trio.move_on_after(timeout):
        while True:
            st = await trio.to_thread.run_sync(upstream.stats)
            if not st.get("active"):
                return
            await trio.sleep(0.05)


async def run_phases(
    plan: Plan,
    targets: list[Target],
    upstream: Upstream,
    tooti: Tooti,
    out: dict[str, Any],
    profile_dir: Path | None,
) -> None:
    up_pid = upstream.proc.popen.pid
    phases: dict[str, dict[str, Acc]] = {}

    def cell(phase: str, name: str) -> Acc:
        return phases.setdefault(phase, {}).setdefault(name, Acc())

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # Warm every path (connections, imports, JIT-less caches) before anything is timed.
    for t in targets:
        warm = Acc()
        await sequential(t, t.raw(16, False), 30, warm, stream=False, expect_tokens=16)
        await sequential(t, t.raw(8, True), 10, warm, stream=True, expect_tokens=8)
        await closed_loop(t, t.raw(16, False), 16, 1.0, warm, stream=False, expect_tokens=16)
        if warm.errors:
            log(f"warm-up {t.name}: {warm.errors} errors {warm.error_kinds}")

    # 1. Non-streaming latency at concurrency 1 (16-token answers).
    log("phase latency: non-streaming, concurrency 1")
    for r in range(plan.rounds_latency):
        for t in targets:
            acc = cell("latency", t.name)
            with Meter(t, up_pid) as m:
                await sequential(
                    t, t.raw(16, False), plan.per_round_latency, acc, stream=False, expect_tokens=16
                )
            acc.metered(m)

    # 2. Requests/s at concurrency 64, non-streaming, fixed duration per round.
    c = plan.rps_concurrency
    log(f"phase rps: non-streaming, concurrency {c}, {plan.rps_seconds}s per round")
    for r in range(plan.rounds_rps):
        for t in targets:
            acc = cell("rps", t.name)
            s0 = upstream.stats()
            with Meter(t, up_pid) as m:
                done, _, elapsed = await closed_loop(
                    t, t.raw(16, False), c, plan.rps_seconds, acc, stream=False, expect_tokens=16
                )
            s1 = upstream.stats()
            acc.metered(m)
            acc.rates.append(done / elapsed)
            acc.tokens += done
            acc.extra.append((s1["requests"] - s0["requests"]) / elapsed)  # upstream's own rate
            await settle(upstream)
            log(f"  round {r + 1} {t.name}: {done / elapsed:.0f} req/s ({acc.errors} errors so far)")

    # 3. Streaming time to first token at concurrency 1 (4-token streams).
    log("phase ttft: streaming, concurrency 1")
    for r in range(plan.rounds_ttft):
        for t in targets:
            acc = cell("ttft", t.name)
            with Meter(t, up_pid) as m:
                await sequential(t, t.raw(4, True), plan.per_round_ttft, acc, stream=True, expect_tokens=4)
            acc.metered(m)

    # 4. Per-chunk cost: 1,000-token streams with no delay, (total - TTFT) / 1000.
    log("phase chunk: 1,000-token streams, concurrency 1")
    for r in range(plan.rounds_chunk):
        for t in targets:
            acc = cell("chunk", t.name)
            with Meter(t, up_pid) as m:
                await sequential(
                    t, t.raw(1000, True), plan.per_round_chunk, acc, stream=True, expect_tokens=1000
                )
            acc.metered(m)

    # 5. Tokens/s with 16, 64 and 256 concurrent 200-token streams.
    for level in plan.tps_levels:
        log(f"phase tps{level}: {level} concurrent 200-token streams, {plan.tps_seconds}s per round")
        for r in range(plan.rounds_tps):
            for t in targets:
                acc = cell(f"tps{level}", t.name)
                s0 = upstream.stats()
                with Meter(t, up_pid) as m:
                    done, toks, elapsed = await closed_loop(
                        t, t.raw(200, True), level, plan.tps_seconds, acc, stream=True, expect_tokens=200
                    )
                s1 = upstream.stats()
                acc.metered(m)
                acc.rates.append(toks / elapsed)
                acc.tokens += toks
                await settle(upstream)
                acc.extra.append((s1["tokens_sent"] - s0["tokens_sent"]) / elapsed)
                log(
                    f"  round {r + 1} {t.name}: {toks / elapsed:.0f} tokens/s, {done} streams "
                    f"({acc.errors} errors so far)"
                )

    for t in targets:
        for cn in t.conns:
            await cn.aclose()
        t.conns = []

    # 6. Profile tooti at c=64 non-streaming (not part of the figures above).
    if profile_dir is not None:
        tt = next(t for t in targets if t.name == "tooti")
        log(f"profile: py-spy on gateway and node during c=64 non-streaming, 2 x {plan.profile_seconds}s")
        for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
            spies = []
            for role, pid in (("gateway", tooti.gw_pid), ("node", tooti.node_pid)):
                path = profile_dir / f"profile-{role}-{'collapsed' if fmt == 'raw' else 'flame'}.{ext}"
                spies.append(
                    subprocess.Popen(
                        [
                            str(VENV / "bin" / "py-spy"),
                            "record",
                            "--pid",
                            str(pid),
                            "--rate",
                            "200",
                            "--nonblocking",
                            "--duration",
                            str(int(plan.profile_seconds)),
                            "--format",
                            fmt,
                            "--output",
                            str(path),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
            await trio.sleep(0.5)  # let py-spy attach
            prof = Acc()
            done, _, elapsed = await closed_loop(
                tt, tt.raw(16, False), 64, plan.profile_seconds + 1, prof, stream=False, expect_tokens=16
            )
            for s in spies:
                _, err = await trio.to_thread.run_sync(s.communicate)
                if s.returncode != 0:
                    log(f"  py-spy failed: {err.decode(errors='replace')[-300:]}")
            log(f"  {fmt}: {done / elapsed:.0f} req/s while sampled")
        for cn in tt.conns:
            await cn.aclose()
        tt.conns = []

    out["raw_phases"] = {ph: {n: _acc_dict(a) for n, a in cells.items()} for ph, cells in phases.items()}


def _acc_dict(a: Acc) -> dict[str, Any]:
    return {
        "samples": a.samples,
        "extra": a.extra,
        "requests": a.requests,
        "errors": a.errors,
        "error_kinds": a.error_kinds,
        "tokens": a.tokens,
        "wall": a.wall,
        "cpu": a.cpu,
        "upstream_cpu": a.upstream_cpu,
        "driver_cpu": a.driver_cpu,
        "busy": a.busy,
        "rates": a.rates,
    }


# ---------------------------------------------------------------------------------------- summary


def summarise(raw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures per target, plus added (target - direct) and ratios."""
    fig: dict[str, dict[str, Any]] = {n: {} for n in ORDER}

    def r2(x: float | None, nd: int = 2) -> float | None:
        return None if x is None else round(x, nd)

    for n, a in raw.get("latency", {}).items():
        fig[n]["latency_p50_ms"] = r2(pct(a["samples"], 50))
        fig[n]["latency_p99_ms"] = r2(pct(a["samples"], 99))
        fig[n]["latency_n"] = len(a["samples"])
    for n, a in raw.get("rps", {}).items():
        fig[n]["rps_c64"] = r2(statistics.mean(a["rates"]) if a["rates"] else None, 1)
        fig[n]["rps_c64_rounds"] = [round(x, 1) for x in a["rates"]]
        fig[n]["rps_c64_latency_p50_ms"] = r2(pct(a["samples"], 50))
        fig[n]["rps_c64_latency_p99_ms"] = r2(pct(a["samples"], 99))
        fig[n]["upstream_req_per_s_during_rps"] = r2(statistics.mean(a["extra"]) if a["extra"] else None, 1)
        fig[n]["upstream_cpu_util_during_rps"] = r2(a["upstream_cpu"] / a["wall"] if a["wall"] else None, 3)
        fig[n]["driver_cpu_util_during_rps"] = r2(a["driver_cpu"] / a["wall"] if a["wall"] else None, 3)
        fig[n]["machine_busy_cores_during_rps"] = r2(a["busy"] / a["wall"] if a["wall"] else None, 2)
        reqs = a["tokens"]  # completed requests were added to tokens for this phase
        for role, sec in a["cpu"].items():
            fig[n][f"{role}_cpu_ms_per_req"] = r2(sec * 1000 / reqs if reqs else None, 3)
            fig[n][f"{role}_cpu_util_during_rps"] = r2(sec / a["wall"] if a["wall"] else None, 3)
        fig[n]["upstream_cpu_ms_per_req"] = r2(a["upstream_cpu"] * 1000 / reqs if reqs else None, 3)
    for n, a in raw.get("ttft", {}).items():
        fig[n]["ttft_p50_ms"] = r2(pct(a["samples"], 50))
        fig[n]["ttft_p99_ms"] = r2(pct(a["samples"], 99))
        fig[n]["ttft_n"] = len(a["samples"])
    for n, a in raw.get("chunk", {}).items():
        fig[n]["per_chunk_ms"] = r2(statistics.median(a["extra"]) if a["extra"] else None, 4)
        fig[n]["per_chunk_n"] = len(a["extra"])
        fig[n]["stream1000_ttft_p50_ms"] = r2(pct(a["samples"], 50))
    for key in sorted(k for k in raw if k.startswith("tps")):
        for n, a in raw[key].items():
            fig[n][f"tokens_per_s_{key[3:]}"] = r2(statistics.mean(a["rates"]) if a["rates"] else None, 0)
            fig[n][f"upstream_tokens_per_s_during_{key}"] = r2(
                statistics.mean(a["extra"]) if a["extra"] else None, 0
            )
            streams = a["tokens"] / 200  # 200-token stream equivalents (cut-off streams count in part)
            for role, sec in a["cpu"].items():
                fig[n][f"{role}_cpu_ms_per_stream_{key[3:]}"] = r2(
                    sec * 1000 / streams if streams else None, 3
                )
            if a["wall"]:
                fig[n][f"machine_busy_cores_{key}"] = r2(a["busy"] / a["wall"], 2)
            fig[n][f"stream_p50_ms_{key[3:]}"] = r2(pct(a["samples"], 50))
    errors: dict[str, dict[str, Any]] = {n: {} for n in ORDER}
    for ph, cells in raw.items():
        for n, a in cells.items():
            if a["errors"]:
                errors[n][ph] = {"errors": a["errors"], "requests": a["requests"], "kinds": a["error_kinds"]}

    added: dict[str, dict[str, Any]] = {}
    d = fig["direct"]
    for n in ("tooti", "litellm"):
        f = fig.get(n, {})
        added[n] = {}
        for k in ("latency_p50_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p99_ms", "per_chunk_ms"):
            if f.get(k) is not None and d.get(k) is not None:
                added[n][k] = round(f[k] - d[k], 4 if k == "per_chunk_ms" else 2)
    ratios: dict[str, Any] = {}
    t, l = fig.get("tooti", {}), fig.get("litellm", {})
    for k in ("rps_c64", "tokens_per_s_16", "tokens_per_s_64", "tokens_per_s_256"):
        if t.get(k) and l.get(k):
            ratios[f"{k}_tooti_over_litellm"] = round(t[k] / l[k], 2)
        if t.get(k) and d.get(k):
            ratios[f"{k}_tooti_over_direct"] = round(t[k] / d[k], 3)
    for k in ("latency_p50_ms", "ttft_p50_ms", "per_chunk_ms"):
        at, al = added.get("tooti", {}).get(k), added.get("litellm", {}).get(k)
        if at is not None and al:
            ratios[f"added_{k}_tooti_over_litellm"] = round(at / al, 2)
    return {"figures": fig, "added": added, "ratios": ratios, "errors": errors}


def check_targets(s: dict[str, Any], scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The goals, each with the measured value and whether it was met."""
    a, f, r = s["added"].get("tooti", {}), s["figures"], s["ratios"]
    al = s["added"].get("litellm", {})
    goals = []

    def goal(name: str, value: Any, ok: bool | None) -> None:
        goals.append({"goal": name, "measured": value, "met": ok})

    v = a.get("latency_p50_ms")
    goal(
        "added p50 non-streaming latency <= 5 ms and below LiteLLM's",
        f"{v} ms (LiteLLM {al.get('latency_p50_ms')} ms)",
        None if v is None else v <= 5 and (al.get("latency_p50_ms") is None or v < al["latency_p50_ms"]),
    )
    v = a.get("ttft_p50_ms")
    goal("added TTFT (p50) <= 8 ms", f"{v} ms", None if v is None else v <= 8)
    v = a.get("per_chunk_ms")
    goal("added per-chunk <= 0.25 ms", f"{v} ms", None if v is None else v <= 0.25)
    v = r.get("rps_c64_tooti_over_litellm")
    goal(
        "req/s at c=64 >= 3x LiteLLM's",
        f"{f['tooti'].get('rps_c64')} vs {f['litellm'].get('rps_c64')} req/s ({v}x)",
        None if v is None else v >= 3,
    )
    if scale:
        goal("1,000 concurrent streams held", scale.get("verdict"), scale.get("held"))
        rss = scale.get("gateway_peak_rss_mb")
        goal(
            "gateway RSS <= 150 MB under 1,000 streams",
            f"{rss} MiB peak",
            None if rss is None else rss <= 150,
        )
    return goals


def system_busy() -> tuple[float, float]:
    """(all CPU time, idle CPU time) of the machine so far, in seconds summed over cores."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, shorter phases (~2 minutes)")
    ap.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (no install needed)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument(
        "--scale",
        default=None,
        help="a bench.scale result JSON to include (default: results/scale-latest.json)",
    )
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="tooti-bench-"))
    begun = time.monotonic()
    print(f"bench: {'quick' if args.quick else 'full'} run, logs in {tmp}", flush=True)
    upstream = Upstream(tmp)
    tooti = lite = None
    out: dict[str, Any] = {
        "started": stamp,
        "mode": "quick" if args.quick else "full",
        "plan": plan.__dict__,
        "machine": machine(),
        "litellm_version": None if args.no_litellm else LITELLM_VERSION,
        "upstream": upstream.url,
    }
    try:
        tooti = Tooti(tmp, upstream.url)
        targets = [
            Target("direct", upstream.port, {}),
            Target("tooti", tooti.port, {"gateway": [tooti.gw_pid], "node": [tooti.node_pid]}),
        ]
        if not args.no_litellm:
            lite = LiteLLM(tmp, upstream.url)
            targets.append(Target("litellm", lite.port, {"litellm": children(lite.pid)}))
        ours = {os.getpid(), upstream.proc.popen.pid, tooti.gw_pid, tooti.node_pid}
        if lite:
            ours |= set(children(lite.pid))
        ours_cpu0 = cpu_seconds(sorted(ours))
        sys0 = system_busy()
        mem_before = {"gateway": memory_mb([tooti.gw_pid]), "node": memory_mb([tooti.node_pid])}
        if lite:
            mem_before["litellm"] = memory_mb(children(lite.pid))
        profile_dir = None if args.no_profile else RESULTS
        trio.run(run_phases, plan, targets, upstream, tooti, out, profile_dir)
        sys1 = system_busy()
        ours_cpu1 = cpu_seconds(sorted(ours))
        mem_after = {"gateway": memory_mb([tooti.gw_pid]), "node": memory_mb([tooti.node_pid])}
        if lite:
            mem_after["litellm"] = memory_mb(children(lite.pid))
        wall = (sys1[0] - sys0[0]) / (os.cpu_count() or 1)
        out["memory_before"], out["memory_after"] = mem_before, mem_after
        busy = (sys1[0] - sys0[0]) - (sys1[1] - sys0[1])
        other = busy - (ours_cpu1 - ours_cpu0)
        out["machine"]["cpu_used_by_other_processes_during_run_cores"] = (
            round(other / wall, 3) if wall else None
        )
        out["machine"]["loadavg_at_end"] = os.getloadavg()
        out["upstream_stats"] = upstream.stats()
        out["summary"] = summarise(out["raw_phases"])
        for ph, cells in out["raw_phases"].items():  # keep the files small: per-request samples
            if ph == "rps" or ph.startswith("tps"):  # of the load phases are summarised above
                for a in cells.values():
                    a["samples"] = f"{len(a['samples'])} samples, dropped"
        if not args.no_profile:
            out["profile"] = {
                role: report.top_table(
                    RESULTS / f"profile-{role}-collapsed.txt", RESULTS / f"profile-{role}-top.txt"
                )
                for role in ("gateway", "node")
            }
    finally:
        if tooti is not None:
            tooti.stop()
        if lite is not None:
            lite.stop()
        upstream.proc.stop()
    out["elapsed_s"] = round(time.monotonic() - begun, 1)
    scale_path = Path(args.scale) if args.scale else RESULTS / "scale-latest.json"
    scale = json.loads(scale_path.read_text()) if scale_path.exists() else None
    out["scale"] = scale
    out["goals"] = check_targets(out["summary"], scale)
    out["command"] = f"python -m bench.run{' --quick' if args.quick else ''}"
    path = RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(out, indent=1))
    shutil.copyfile(path, RESULTS / "latest.json")
    print(report.console(out), flush=True)
    print(f"results: {path} (elapsed {out['elapsed_s']} s)", flush=True)
    if not args.no_doc:
        report.write_doc(out, path)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
