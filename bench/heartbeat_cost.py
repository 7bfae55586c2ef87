"""The gateway's cost of a network of N nodes: registry updates from control-stream heartbeats.

    python -m bench.heartbeat_cost [--nodes 10 50 200] [--seconds 20] [--out FILE]

A real gateway process (``tooti gateway start``) and one simulator process per N holding N real
node agents (each its own libp2p host and key, loopback backend, joining the gateway over
``/tooti/control`` - Hello, Intro with the gateway's certified record, Welcome - and sending a
heartbeat every second on that stream); they trust the network the gateway is a member of.
The gateway's CPU time is read from /proc before and after a steady window; its idle cost is
measured first with no node.
Writes bench/results/heartbeat-cost.json (``--out``: elsewhere, e.g. for a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from harness import procs as _procs


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _simulate(n: int, bootstrap: str, network_id: str, seconds: float) -> None:
    """Run N node agents of network ``network_id`` in this process until killed."""
    import trio

    from tooti import config
    from tooti.node.run import run_node

    tmp = Path(tempfile.mkdtemp(prefix="tooti-sim-"))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                cfg = config.NodeConfig(
                    node=config.NodeSection(name=f"sim{i}", identity_key_file=tmp / f"{i}.key"),
                    network=config.NodeNetwork(bootstrap=(bootstrap,), id=network_id),
                    backend=config.BackendSection(type="loopback"),
                    heartbeat=config.HeartbeatSection(interval_sec=1.0),
                )
                await nursery.start(run_node, cfg)
            print("ready", flush=True)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _measure(gw: _procs.Gateway, window: float) -> tuple[float, int]:
    pid = gw.proc.popen.pid
    nodes = httpx.get(gw.http + "/v1/network/nodes", trust_env=False).json()
    hb0 = nodes["heartbeats"]["control"]  # nodes send heartbeats only on their control stream
    c0, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, t1 = _cpu_seconds(pid), time.monotonic()
    nodes = httpx.get(gw.http + "/v1/network/nodes", trust_env=False).json()
    hb1 = nodes["heartbeats"]["control"]
    return (c1 - c0) / (t1 - t0), hb1 - hb0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--simulate":
        _simulate(int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/results/heartbeat-cost.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tooti-hb-bench-"))
    gw = _procs.start_gateway(tmp, auth="open", ttl=10)
    results: dict[str, object] = {}
    try:
        time.sleep(2)
        idle, _ = _measure(gw, args.seconds / 2)
        results["idle_cores"] = idle
        print(f"idle gateway: {idle * 100:.1f}% of a core")
        for n in args.nodes:
            sim = _procs.Proc(
                [
                    sys.executable,
                    "-m",
                    "bench.heartbeat_cost",
                    "--simulate",
                    str(n),
                    gw.p2p,
                    _procs.network()[1],  # the simulator's own network() would be another one
                    str(args.seconds * 3 + 120),
                ],
                log=tmp / f"sim{n}.log",
            )
            sim.wait_line("ready", timeout=300)
            deadline = time.monotonic() + 60
            while len(httpx.get(gw.http + "/v1/network/nodes", trust_env=False).json()["data"]) < n:
                assert time.monotonic() < deadline, "not every simulated node joined"
                time.sleep(0.5)
            time.sleep(3)  # let every node's first heartbeats and the join logging pass
            cores, beats = _measure(gw, args.seconds)
            per_hb = (cores - idle) * args.seconds / beats * 1000 if beats else float("nan")
            results[str(n)] = {
                "gateway_cores": cores,
                "heartbeats_per_s": beats / args.seconds,
                "cpu_ms_per_heartbeat": per_hb,
                "gateway_rss_mib": _rss_mib(gw.proc.popen.pid),
            }
            print(
                f"{n:4} nodes: gateway {cores * 100:5.1f}% of a core, {beats / args.seconds:6.1f} heartbeats/s, "
                f"{per_hb:.2f} CPU-ms per heartbeat (idle subtracted), RSS {_rss_mib(gw.proc.popen.pid):.0f} MiB"
            )
            sim.stop()
            deadline = time.monotonic() + 30
            while httpx.get(gw.http + "/v1/network/nodes", trust_env=False).json()["data"]:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        gw.proc.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
