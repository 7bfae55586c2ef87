"""Gateways that last: nodes are back within seconds of a restart, and a gateway that has
seen a thousand connections come and go still admits new nodes at once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from harness import procs as _procs
from tooti.p2p.host import build_host
from tooti.p2p.identity import load_or_create

#: The bound the product promises (2 s) plus slack for a loaded 2-core CI machine.
REJOIN_BOUND_S = 2.0 + 1.5


def _live_nodes(gw: _procs.Gateway) -> set[str]:
    r = httpx.get(gw.base_url + "/network/nodes", trust_env=False, timeout=5)
    return {n["peer_id"] for n in r.json()["data"] if n["live"]}


def _wait_nodes(gw: _procs.Gateway, peers: set[str], timeout: float) -> float:
    """Seconds until every peer in ``peers`` is live on ``gw`` (polling the HTTP API: the
    gateway is another process and has no event to wait on)."""
    start = time.monotonic()
    while not peers <= _live_nodes(gw):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"nodes not back after {timeout}s: {peers - _live_nodes(gw)}")
        time.sleep(0.02)
    return time.monotonic() - start


def test_nodes_rejoin_a_restarted_gateway_within_two_seconds(tmp_path: Path) -> None:
    gw = _procs.start_gateway(tmp_path, auth="open")
    nodes = [
        _procs.start_node(tmp_path, f"n{i}", gateways=[gw], backend={"type": "loopback"}) for i in range(3)
    ]
    try:
        peers = {n.peer_id for n in nodes}
        _wait_nodes(gw, peers, 20)
        gw.proc.kill()
        # Long enough for every node to have failed redials (py-libp2p's negative dial cache
        # then blocks the peer for up to a minute unless the node lifts it).
        time.sleep(3)
        again = _procs.tooti(
            ["gateway", "start", "-file", str(gw.config)], log=tmp_path / "gw" / "gateway2.log"
        )
        try:
            again.wait_line("tooti gateway ready:")
            # Asked while the nodes are rejoining, the gateway says "unavailable, retry" (503)
            # or already serves (200): never "no such model" (404), which clients do not retry.
            status = httpx.post(
                gw.base_url + "/chat/completions",
                json={"model": "loopback", "messages": [{"role": "user", "content": "x"}]},
                trust_env=False,
                timeout=10,
            ).status_code
            assert status in (200, 503), status
            took = _wait_nodes(gw, peers, 30)
            print(f"\nall {len(peers)} nodes rejoined {took:.2f} s after the gateway listened again")
            assert took < REJOIN_BOUND_S
            for n in nodes:
                assert n.proc.popen.poll() is None
        finally:
            again.stop()
    finally:
        for n in nodes:
            n.proc.stop()


async def test_a_gateway_admits_nodes_after_a_thousand_connections(tmp_path: Path) -> None:
    # A cap of 100 live connections: 1,000 opened and closed in turn cross it ten times over,
    # which a limit counting connections over the gateway's lifetime would not survive.
    gw = await trio.to_thread.run_sync(
        lambda: _procs.start_gateway(tmp_path, auth="open", extra={"network": {"max_connections": 100}})
    )
    info = info_from_p2p_addr(Multiaddr(gw.p2p))
    try:

        async def churn(i: int, count: int) -> None:
            host = build_host(load_or_create(tmp_path / f"churn{i}.key"))
            async with host.run(listen_addrs=[]):
                for _ in range(count):
                    with trio.fail_after(10):
                        await host.connect(info)
                        await host.disconnect(info.peer_id)
                await host.close()

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(churn, i, 125)  # 1,000 connections opened and closed
        start = time.monotonic()
        node = await trio.to_thread.run_sync(
            lambda: _procs.start_node(tmp_path, "late", gateways=[gw], backend={"type": "loopback"})
        )
        try:
            await trio.to_thread.run_sync(lambda: _wait_nodes(gw, {node.peer_id}, 20))
            took = time.monotonic() - start
            print(f"\nnew node joined {took:.2f} s after 1,000 churned connections (incl. process start)")
            assert took < 5.0
        finally:
            await trio.to_thread.run_sync(node.proc.stop)
        assert gw.proc.popen.poll() is None
    finally:
        await trio.to_thread.run_sync(gw.proc.stop)
