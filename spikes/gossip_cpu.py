"""Spike: CPU a gateway spends per received gossipsub heartbeat (+ validator/rate-limit checks).

    /work/venv/bin/python spikes/gossip_cpu.py                 # default scenario set
    /work/venv/bin/python spikes/gossip_cpu.py --hosts 20 --rate 1 --seconds 8

Two OS processes: `gateway` (listens, subscribes, validates, drains, counts) and
`publishers` (N hosts in ONE process, none listening, each dials the gateway and
publishes `rate` heartbeats/s; plus one "liar" host whose payload claims another peer id,
which the gateway's validator must reject). The gateway measures time.process_time() over
an idle window (connections up, nothing published) and over the publishing window, and
reports (cpu_busy - cpu_idle_rate * window) / messages.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from _common import (
    HEARTBEAT_TOPIC,
    drain,
    encode_heartbeat,
    gossipsub_and_pubsub,
    heartbeat_validator,
    make_host,
    result,
    set_subscription_buffer,
    setup_logging,
    wait_json,
    write_json,
)
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr


async def run_gateway(st: Path, a) -> None:
    host = make_host(create_new_key_pair())
    gossipsub, pubsub = gossipsub_and_pubsub(host, rate_limit=a.rate_limit)
    counts = {"ok": 0, "rejected": 0, "senders": set()}

    def counting_validator(fwd, msg) -> bool:
        ok = heartbeat_validator(fwd, msg)
        counts["rejected"] += not ok
        return ok

    def on_msg(msg) -> None:
        json.loads(msg.data)  # a real registry would decode + upsert here
        counts["ok"] += 1
        counts["senders"].add(msg.from_id)

    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        async with (
            background_trio_service(pubsub),
            background_trio_service(gossipsub),
            trio.open_nursery() as nursery,
        ):
            await pubsub.wait_until_ready()
            set_subscription_buffer(4096)
            pubsub.set_topic_validator(HEARTBEAT_TOPIC, counting_validator, False)
            nursery.start_soon(drain, await pubsub.subscribe(HEARTBEAT_TOPIC), on_msg)
            write_json(st / "gw.json", {"addr": str(host.get_addrs()[0])})
            await wait_json(st / "ready.json", 30)
            c0, t0 = time.process_time(), time.perf_counter()
            await trio.sleep(3.0)  # idle: N connections, gossip heartbeats at 1 Hz, no data
            idle_rate = (time.process_time() - c0) / (time.perf_counter() - t0)
            n0, r0 = counts["ok"], counts["rejected"]
            c1, t1 = time.process_time(), time.perf_counter()
            write_json(st / "go.json", {})
            await wait_json(st / "done.json", 60)
            await trio.sleep(0.3)  # let the tail drain
            cpu, wall = time.process_time() - c1, time.perf_counter() - t1
            n, rej = counts["ok"] - n0, counts["rejected"] - r0
            result(
                "gateway",
                hosts=a.hosts,
                rate_per_host=a.rate,
                rate_limit=a.rate_limit,
                received=n,
                rejected=rej,
                senders=len(counts["senders"]),
                window_s=round(wall, 2),
                msgs_per_s=round(n / wall, 1),
                cpu_busy_frac=round(cpu / wall, 3),
                cpu_idle_frac=round(idle_rate, 4),
                cpu_ms_per_msg=round((cpu - idle_rate * wall) * 1000 / max(1, n + rej), 3),
                cpu_ms_per_msg_gross=round(cpu * 1000 / max(1, n + rej), 3),
            )
            nursery.cancel_scope.cancel()
        await host.close()


async def run_publishers(st: Path, a) -> None:
    gw = info_from_p2p_addr(Multiaddr((await wait_json(st / "gw.json"))["addr"]))
    sent = {"n": 0}

    async def one(i: int, ready: trio.Event, stop: trio.Event, liar: bool) -> None:
        host = make_host(create_new_key_pair(), is_node=True)
        gossipsub, pubsub = gossipsub_and_pubsub(host, rate_limit=a.rate_limit)
        claimed = ID.from_pubkey(create_new_key_pair().public_key) if liar else host.get_id()
        async with host.run(listen_addrs=[]):
            async with background_trio_service(pubsub), background_trio_service(gossipsub):
                await pubsub.wait_until_ready()
                await host.connect(gw)
                while gw.peer_id not in pubsub.peer_topics.get(HEARTBEAT_TOPIC, ()):
                    await trio.sleep(0.01)
                ready.set()
                await wait_json(st / "go.json", 60)
                seq, period, t_next = 0, 1.0 / a.rate, time.perf_counter()
                t_end = t_next + a.seconds
                while time.perf_counter() < t_end:
                    await pubsub.publish(HEARTBEAT_TOPIC, encode_heartbeat(claimed, seq, 0.0, ["smollm2"]))
                    sent["n"] += 1
                    seq += 1
                    t_next += period
                    await trio.sleep(max(0.0, t_next - time.perf_counter()))
                await stop.wait()
            await host.close()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        readies = []
        for i in range(a.hosts + 1):  # the last one lies about its peer id
            ev = trio.Event()
            readies.append(ev)
            nursery.start_soon(one, i, ev, stop, i == a.hosts)
        for ev in readies:
            await ev.wait()
        write_json(st / "ready.json", {})
        await wait_json(st / "go.json", 60)
        await trio.sleep(a.seconds + 0.2)
        write_json(st / "done.json", {"sent": sent["n"]})
        result("publishers", sent=sent["n"])
        await trio.sleep(1.0)  # gateway finishes its window while we are still connected
        stop.set()


def orchestrate(a) -> None:
    scenarios = (
        [(a.hosts, a.rate, a.rate_limit)]
        if a.hosts
        else [
            (20, 1.0, 1000.0),  # the real load: 20 nodes x 1 Hz
            (20, 10.0, 1000.0),  # 200 msg/s to get a stable per-message CPU number
            (1, 50.0, 10.0),  # one fast publisher with the DEFAULT rate limit (trap 7)
        ]
    )
    for hosts, rate, limit in scenarios:
        st = Path(tempfile.mkdtemp(prefix="tooti-cpu-"))
        base = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--state",
            str(st),
            "--hosts",
            str(hosts),
            "--rate",
            str(rate),
            "--rate-limit",
            str(limit),
            "--seconds",
            str(a.seconds),
        ]
        gw = subprocess.Popen([*base, "--role", "gateway"], stdout=subprocess.PIPE, text=True)
        pub = subprocess.Popen([*base, "--role", "publishers"], stdout=subprocess.PIPE, text=True)
        try:
            outs = [p.communicate(timeout=40)[0] for p in (gw, pub)]
        finally:
            for p in (gw, pub):  # only our own children, by handle
                if p.poll() is None:
                    p.kill()
        for out in outs:
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    print(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["all", "gateway", "publishers"], default="all")
    ap.add_argument("--state", type=Path)
    ap.add_argument("--hosts", type=int, default=0)
    ap.add_argument("--rate", type=float, default=1.0, help="heartbeats/s per host")
    ap.add_argument("--rate-limit", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args()
    setup_logging(False)
    if a.role == "all":
        orchestrate(a)
    else:
        trio.run(run_gateway if a.role == "gateway" else run_publishers, a.state, a)


if __name__ == "__main__":
    main()
