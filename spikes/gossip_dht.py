"""Spike: gossip heartbeats + DHT provider records + reaching a node that listens on nothing.

    /work/venv/bin/python spikes/gossip_dht.py --role all       # runs the 3 processes below
    roles: gateway (gateway1) | gateway2 | node      (each a separate OS process)

gateway1: listens on 127.0.0.1, DHT server, relay v2 HOP, subscribes to the topics.
node:     listens on NOTHING; dials gateway1; reserves a relay v2 slot on gateway1;
          DHT client; provides "smollm2"; publishes a signed heartbeat every 1 s;
          dials any gateway it learns of on GATEWAYS_TOPIC (dial-back).
gateway2: bootstraps to gateway1 only; (a) gets the node's heartbeats via gateway1,
          (b) finds the node as provider of "smollm2", (c1) opens a stream to the node
          through the relay on gateway1, (c2) announces itself on GATEWAYS_TOPIC, waits
          for the node to dial in, and opens a stream over that connection.
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
    ECHO_PROTOCOL,
    GATEWAYS_TOPIC,
    HEARTBEAT_TOPIC,
    MS,
    ConnWatcher,
    conns,
    drain,
    echo,
    echo_handler,
    encode_heartbeat,
    gossipsub_and_pubsub,
    heartbeat_validator,
    load_or_create_identity,
    make_host,
    model_key,
    result,
    set_subscription_buffer,
    setup_logging,
    wait_json,
    write_json,
)
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

LOCAL = Multiaddr("/ip4/127.0.0.1/tcp/0")


async def run_gateway1(st: Path, deadline: float) -> None:
    host = make_host(load_or_create_identity(st / "gateway1.key"))
    gossipsub, pubsub = gossipsub_and_pubsub(host)
    dht = KadDHT(host, DHTMode.SERVER)
    limits = RelayLimits(duration=3600, data=1 << 30, max_circuit_conns=64, max_reservations=256)
    relay = CircuitV2Protocol(host, limits=limits, allow_hop=True)  # registers HOP + STOP
    host.get_network().register_notifee(
        ConnWatcher(
            "gw1", on_down=lambda p, c: result("gateway1", event="peer_down", peer=str(p), at=time.time())
        )
    )
    async with host.run(listen_addrs=[LOCAL]):
        async with (
            background_trio_service(pubsub),
            background_trio_service(gossipsub),
            background_trio_service(dht),
            background_trio_service(relay),
        ):
            await pubsub.wait_until_ready()
            set_subscription_buffer(4096)
            pubsub.set_topic_validator(HEARTBEAT_TOPIC, heartbeat_validator, False)
            hb = await pubsub.subscribe(HEARTBEAT_TOPIC)
            gw = await pubsub.subscribe(GATEWAYS_TOPIC)  # needed so it forwards announces
            write_json(st / "gateway1.json", {"addr": str(host.get_addrs()[0])})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, hb, lambda m: None)
                nursery.start_soon(drain, gw, lambda m: None)
                while time.time() < deadline and not (st / "stop").exists():
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
        await host.close()  # trap 6: leaving host.run() alone leaks connections


async def run_node(st: Path, deadline: float) -> None:
    t_start = time.time()
    host = make_host(load_or_create_identity(st / "node.key"), is_node=True)
    me = host.get_id()
    g1 = info_from_p2p_addr(Multiaddr((await wait_json(st / "gateway1.json"))["addr"]))
    gossipsub, pubsub = gossipsub_and_pubsub(host)
    dht = KadDHT(host, DHTMode.CLIENT)  # CLIENT: no /ipfs/kad handler, never a "closer peer"
    relay = CircuitV2Protocol(host, allow_hop=False)  # registers the STOP handler only
    relay_tp = CircuitV2Transport(host, relay, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT))
    host.set_stream_handler(ECHO_PROTOCOL, echo_handler)
    # Advertised address = the relay circuit. announce_addrs cannot express this: BasicHost.
    # get_addrs() strips from the FIRST /p2p/ (the relay's) and appends ours, giving the
    # relay's TCP address with our peer id. And with no address at all, gateway1 drops our
    # ADD_PROVIDER ("Provider ... has no addresses, skipping"). So override per instance.
    circuit = Multiaddr(f"{g1.addrs[0]}/p2p/{g1.peer_id}/p2p-circuit/p2p/{me}")
    host.get_addrs = lambda: [circuit]  # type: ignore[method-assign]
    dialed: set[ID] = set()

    async with host.run(listen_addrs=[]):  # no listener at all
        async with (
            background_trio_service(pubsub),
            background_trio_service(gossipsub),
            background_trio_service(dht),
            background_trio_service(relay),
            trio.open_nursery() as nursery,
        ):
            await pubsub.wait_until_ready()
            t0 = time.perf_counter()
            await host.connect(g1)
            result("node", dial_gateway1_ms=MS(t0), listen_addrs=[str(a) for a in host.get_transport_addrs()])

            def on_gateway(msg) -> None:  # dial-back: connect out to every gateway we hear of
                ann = json.loads(msg.data)
                pid = ID(msg.from_id)  # verified signer, not the claimed id in the payload
                if pid != me and pid not in dialed and not host.get_network().get_connections(pid):
                    dialed.add(pid)
                    nursery.start_soon(dial_back, pid, ann["addrs"])

            async def dial_back(pid: ID, addrs: list[str]) -> None:
                t = time.perf_counter()
                try:
                    await host.connect(PeerInfo(pid, [Multiaddr(a) for a in addrs]))
                    result("node", dial_back_ms=MS(t), gateway=str(pid))
                except Exception as e:
                    result("node", dial_back_error=repr(e))

            nursery.start_soon(drain, await pubsub.subscribe(GATEWAYS_TOPIC), on_gateway)
            # Do not publish before gateway1's subscription has arrived: fanout would be empty.
            while g1.peer_id not in pubsub.peer_topics.get(HEARTBEAT_TOPIC, ()):
                await trio.sleep(0.005)
            result("node", gateway1_subscription_seen_ms=MS(t0))

            async def heartbeats() -> None:
                seq = 0
                while True:
                    await pubsub.publish(HEARTBEAT_TOPIC, encode_heartbeat(me, seq, t_start, ["smollm2"]))
                    seq += 1
                    await trio.sleep(1.0)

            nursery.start_soon(heartbeats)

            t = time.perf_counter()  # relay v2 reservation on gateway1 (refreshed by relay_tp)
            s = await host.new_stream(g1.peer_id, [HOP_PROTOCOL_ID])
            ok = await relay_tp.reserve(s, g1.peer_id, nursery)  # nursery runs the refresher
            await s.close()
            result("node", relay_reserved=ok, reserve_ms=MS(t))

            await dht.add_peer(g1.peer_id, skip_server_mode_check=True)  # seed by hand (trap 9)
            t = time.perf_counter()
            provided = await dht.provide(model_key("smollm2"))
            result("node", provided=provided, provide_ms=MS(t), peer_id=str(me), t_start=t_start)

            while time.time() < deadline and not (st / "stop_node").exists():
                await trio.sleep(0.05)
            result("node", closing_at=time.time())
            nursery.cancel_scope.cancel()
        await host.close()


async def run_gateway2(st: Path, deadline: float) -> None:
    host = make_host(load_or_create_identity(st / "gateway2.key"))
    gossipsub, pubsub = gossipsub_and_pubsub(host)
    dht = KadDHT(host, DHTMode.SERVER)
    relay = CircuitV2Protocol(host, allow_hop=False)
    relay_tp = CircuitV2Transport(host, relay, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT))
    g1 = info_from_p2p_addr(Multiaddr((await wait_json(st / "gateway1.json"))["addr"]))
    node_up, node_down, state = trio.Event(), trio.Event(), {}

    def on_heartbeat(msg) -> None:
        sender = ID(msg.from_id)  # verified origin (signature + validator), NOT the forwarder
        if "node" not in state:
            now, hb, state["node"] = time.time(), json.loads(msg.data), sender
            result(
                "gateway2",
                first_heartbeat_at=now,
                from_id=str(sender),
                payload_peer_id=hb["peer_id"],
                since_node_start_ms=round((now - hb["t_start"]) * 1000, 1),
            )

    def on_up(peer: ID, conn) -> None:
        if peer == state.get("node") and state.get("await_direct"):
            state["direct_at"] = time.perf_counter()
            node_up.set()

    def on_down(peer: ID, conn) -> None:
        if peer == state.get("node") and state.get("await_down"):
            result("gateway2", event="node_down", at=time.time())
            node_down.set()

    host.get_network().register_notifee(ConnWatcher("gw2", on_up, on_down))
    async with host.run(listen_addrs=[LOCAL]):
        async with (
            background_trio_service(pubsub),
            background_trio_service(gossipsub),
            background_trio_service(dht),
            background_trio_service(relay),
            trio.open_nursery() as nursery,
        ):
            await pubsub.wait_until_ready()
            set_subscription_buffer(4096)
            pubsub.set_topic_validator(HEARTBEAT_TOPIC, heartbeat_validator, False)
            nursery.start_soon(drain, await pubsub.subscribe(HEARTBEAT_TOPIC), on_heartbeat)
            nursery.start_soon(drain, await pubsub.subscribe(GATEWAYS_TOPIC), lambda m: None)
            t = time.perf_counter()
            await host.connect(g1)
            result("gateway2", dial_gateway1_ms=MS(t))
            await dht.add_peer(g1.peer_id, skip_server_mode_check=True)
            write_json(st / "gateway2.json", {"addr": str(host.get_addrs()[0])})

            with trio.move_on_after(max(1, deadline - time.time())):
                while "node" not in state:  # (a) heartbeats forwarded by gateway1
                    await trio.sleep(0.01)
                node = state["node"]
                # (b) DHT: the record may lag the first heartbeat a little -> poll
                t, calls = time.perf_counter(), []
                while True:
                    t1 = time.perf_counter()
                    provs = await dht.find_providers(model_key("smollm2"))
                    calls.append(MS(t1))
                    if any(p.peer_id == node for p in provs):
                        break
                    await trio.sleep(0.05)
                result(
                    "gateway2",
                    find_providers_calls_ms=calls,
                    find_providers_total_ms=MS(t),
                    providers=[(str(p.peer_id), [str(a) for a in p.addrs]) for p in provs],
                )
                t1 = time.perf_counter()
                await dht.find_providers(model_key("smollm2"))
                result("gateway2", find_providers_repeat_ms=MS(t1))
                # (c0) Is there already a connection to the node? The node's provide() sent
                # ADD_PROVIDER to every k-closest DHT server, gateway2 included, so the NODE
                # dialed US. host.new_stream() then reuses that inbound connection.
                result("gateway2", conns_to_node=conns(host, node))
                if host.get_network().get_connections(node):
                    reply, rtt = await echo(host, node)
                    result("gateway2", reverse_stream_echo=reply.decode(), reverse_stream_ms=rtt)
                    await host.disconnect(node)  # drop it to test the other two paths
                    await trio.sleep(0.3)
                try:  # without that connection there is no route: relay addrs are skipped
                    with trio.fail_after(5):
                        await host.new_stream(node, [ECHO_PROTOCOL])
                    result("gateway2", plain_new_stream="unexpectedly worked", conns=conns(host, node))
                except BaseException as e:
                    result("gateway2", plain_new_stream_error=type(e).__name__ + ": " + str(e)[:160])
                # (c1) through the relay: the circuit transport's dial(), not host.connect
                circuit = next(
                    a for p in provs if p.peer_id == node for a in p.addrs if "p2p-circuit" in str(a)
                )
                t = time.perf_counter()
                conn = await relay_tp.dial(circuit)
                dial_ms = MS(t)
                reply, rtt = await echo(host, node)
                reply2, rtt2 = await echo(host, node)
                result(
                    "gateway2",
                    relay_dial_ms=dial_ms,
                    relay_echo=reply.decode(),
                    relay_first_stream_ms=rtt,
                    relay_second_stream_ms=rtt2,
                    conns=conns(host, node),
                )
                await conn.close()
                await trio.sleep(0.3)
                # (c2) dial-back: announce our address on gossip; node dials us; reverse stream
                state["await_direct"] = True
                t = time.perf_counter()
                ann = json.dumps({"peer_id": str(host.get_id()), "addrs": [str(a) for a in host.get_addrs()]})
                while not node_up.is_set():
                    await pubsub.publish(GATEWAYS_TOPIC, ann.encode())
                    with trio.move_on_after(1.0):
                        await node_up.wait()
                reply, rtt = await echo(host, node)
                result(
                    "gateway2",
                    dialback_connected_ms=round((state["direct_at"] - t) * 1000, 1),
                    dialback_echo=reply.decode(),
                    dialback_stream_ms=rtt,
                )
                (st / "stop_node").touch()  # (d) node exits -> notifee eviction latency
                state["await_down"] = True
                await node_down.wait()
            nursery.cancel_scope.cancel()
        await host.close()


def orchestrate(st: Path, verbose: bool) -> None:
    me, procs = Path(__file__).resolve(), {}

    def spawn(role: str) -> None:
        cmd = [sys.executable, str(me), "--role", role, "--state", str(st)] + (["-v"] if verbose else [])
        procs[role] = (
            subprocess.Popen(cmd, stdout=open(st / f"{role}.log", "w"), stderr=subprocess.STDOUT),
            time.time(),
        )

    try:
        spawn("gateway")
        trio.run(wait_json, st / "gateway1.json", 20.0)
        spawn("gateway2")
        trio.run(wait_json, st / "gateway2.json", 20.0)
        time.sleep(1.0)  # let the gateway1<->gateway2 mesh form
        spawn("node")
        for role in ("gateway2", "node"):
            procs[role][0].wait(timeout=30)
        (st / "stop").touch()
        procs["gateway"][0].wait(timeout=10)
    finally:
        for p, _ in procs.values():  # only our own children, by handle
            if p.poll() is None:
                p.kill()
    print(f"node launched at {procs['node'][1]:.3f} (launch -> first heartbeat at gateway2 below)")
    for role in ("gateway", "node", "gateway2"):
        for line in (st / f"{role}.log").read_text().splitlines():
            r = json.loads(line[7:]) if line.startswith("RESULT ") else {"role": role, "log": line}
            if "first_heartbeat_at" in r:
                r["since_node_launch_ms"] = round((r["first_heartbeat_at"] - procs["node"][1]) * 1000, 1)
            print(json.dumps(r))
    print(f"logs: {st}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["all", "gateway", "gateway2", "node"], default="all")
    ap.add_argument("--state", type=Path, default=None, help="rendezvous/key dir")
    ap.add_argument("--seconds", type=float, default=25.0, help="hard cap per process")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    setup_logging(a.verbose)
    st = a.state or Path(tempfile.mkdtemp(prefix="tooti-spike-"))
    st.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + a.seconds
    if a.role == "all":
        orchestrate(st, a.verbose)
    else:
        fn = {"gateway": run_gateway1, "gateway2": run_gateway2, "node": run_node}[a.role]
        trio.run(fn, st, deadline)


if __name__ == "__main__":
    main()
