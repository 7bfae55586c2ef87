"""The network, through real processes: 2 gateways, 4 nodes in 2 namespaces, under load.

Each node is configured with ONE gateway only; every model must still be reachable from both
gateways (nodes learn of the other gateway and join it, dialing out). Under steady load a
SIGKILLed node costs no request that had not started streaming; a SIGSTOPped node is evicted
within the heartbeat TTL and gets no new requests; SIGCONT brings it back.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models

TTL = 3.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("network")
    up, up_url = _procs.start_backend(
        "tests.standins.openai_upstream", tmp / "upstream.log", "--model", "fake"
    )
    gw1 = _procs.start_gateway(tmp, "gw1", ttl=TTL)
    gw2 = _procs.start_gateway(tmp, "gw2", ttl=TTL, bootstrap=[gw1.p2p])
    backend = {"type": "openai", "base_url": up_url}
    nodes = {}
    for name, ns, gw in (
        ("red1", "red", gw1),
        ("red2", "red", gw2),
        ("blue1", "blue", gw1),
        ("blue2", "blue", gw2),
    ):
        nodes[name] = _procs.start_node(
            tmp, name, gateways=[gw], backend=backend, node={"namespace": ns, "max_concurrency": 16}
        )
    for gw in (gw1, gw2):
        wait_for_models(gw.base_url, {"fake", "red:fake", "blue:fake"})
    yield {"gws": [gw1, gw2], "nodes": nodes, "tmp": tmp, "up": up_url, "backend": backend}
    for n in nodes.values():
        n.proc.stop()
    for p in (gw2.proc, gw1.proc, up):
        p.stop()


def _live(gw: _procs.Gateway) -> dict[str, dict]:
    data = httpx.get(gw.http + "/v1/network/nodes", trust_env=False).json()["data"]
    return {n["peer_id"]: n for n in data if n["live"]}


def _ask(gw: _procs.Gateway, model: str = "fake", **x_fake) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(
        gw.base_url + "/chat/completions",
        trust_env=False,
        timeout=30,
        json={
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "x_fake": x_fake or {"tokens": 4},
        },
    )


def test_every_model_reachable_from_both_gateways(net: dict) -> None:
    peers = {n.peer_id for n in net["nodes"].values()}
    for gw in net["gws"]:
        live = _live(gw)
        assert peers <= set(live), "a gateway does not see every node"
        for model in ("red:fake", "blue:fake", "fake"):
            assert _ask(gw, model).status_code == 200
    # namespace routing: red:fake is only ever served by red nodes, through either gateway
    red = {net["nodes"]["red1"].peer_id, net["nodes"]["red2"].peer_id}
    served = Counter(_ask(gw, "red:fake").headers["x-tooti-node"] for gw in net["gws"] for _ in range(20))
    assert set(served) <= red and sum(served.values()) == 40


def test_round_trip_times_are_measured(net: dict) -> None:
    deadline = time.monotonic() + 15
    while True:
        rtts = [n["rtt_ms"] for n in _live(net["gws"][0]).values()]
        if rtts and all(r is not None for r in rtts):
            break
        assert time.monotonic() < deadline, f"no RTT measured: {rtts}"
        time.sleep(0.2)
    assert all(0 < r < 1000 for r in rtts)


def test_status_command_prints_the_network(net: dict) -> None:
    out = _procs.Proc(
        [*_procs.sys.executable.split(), "-m", "tooti", "status", "--gateway", net["gws"][1].http],
        log=net["tmp"] / "status.log",
    )
    out.popen.wait(30)
    lines = [line for line in out._lines if line != "\0eof"]
    assert lines[0].startswith("gateway ") and "4 node(s)" in lines[0]
    assert sum("live" in line for line in lines) == 4


class _Load:
    """Steady non-streaming load through both gateways from background threads."""

    def __init__(self, gws: list[_procs.Gateway]) -> None:
        self.gws = gws
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(gw,), daemon=True) for gw in gws for _ in range(3)
        ]

    def _run(self, gw: _procs.Gateway) -> None:
        with httpx.Client(trust_env=False, timeout=20) as c:
            while not self.stop.is_set():
                r = c.post(
                    gw.base_url + "/chat/completions",
                    json={
                        "model": "fake",
                        "messages": [{"role": "user", "content": "x"}],
                        "x_fake": {"tokens": 20, "delay_ms": 5},
                    },
                )
                if r.status_code == 200:
                    self.ok[r.headers["x-tooti-node"]] += 1
                else:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_sigkill_under_load_fails_nothing(net: dict) -> None:
    victim = net["nodes"]["blue1"]
    with _Load(net["gws"]) as load:
        while sum(load.ok.values()) < 30:
            time.sleep(0.05)
        killed_at = time.monotonic()
        victim.proc.kill()
        # both gateways notice at once: the connection dropped
        for gw in net["gws"]:
            while victim.peer_id in _live(gw):
                assert time.monotonic() - killed_at < 2.0, "killed node not evicted within 2 s"
                time.sleep(0.02)
        noticed = time.monotonic() - killed_at
        before = sum(load.ok.values())
        while sum(load.ok.values()) < before + 60:
            time.sleep(0.05)
    assert load.failures == [], load.failures[:5]
    assert len(load.ok) >= 3, f"concurrent load was not spread over the nodes: {load.ok}"
    print(f"killed node evicted by both gateways in {noticed * 1000:.0f} ms")
    # restarted, it is routed to again
    restarted = _procs.start_node(
        net["tmp"],
        "blue1",
        gateways=[net["gws"][0]],
        backend=net["backend"],
        node={"namespace": "blue", "max_concurrency": 16},
    )
    net["nodes"]["blue1"] = restarted
    for gw in net["gws"]:
        deadline = time.monotonic() + 10
        while restarted.peer_id not in _live(gw):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_sigstop_is_evicted_within_ttl_and_sigcont_returns(net: dict) -> None:
    frozen = net["nodes"]["red2"]
    frozen.proc.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        for gw in net["gws"]:
            while frozen.peer_id in _live(gw):
                assert time.monotonic() - stopped_at < TTL + 2.0, "frozen node not evicted in time"
                time.sleep(0.05)
        evicted = time.monotonic() - stopped_at
        with _Load(net["gws"]) as load:
            while sum(load.ok.values()) < 60:
                time.sleep(0.05)
        assert load.failures == [], load.failures[:5]
        assert frozen.peer_id not in load.ok, "a frozen node was given new requests"
        print(f"frozen node evicted in {evicted * 1000:.0f} ms (TTL {TTL}s)")
    finally:
        frozen.proc.signal(signal.SIGCONT)
    for gw in net["gws"]:
        deadline = time.monotonic() + 10
        while frozen.peer_id not in _live(gw):
            assert time.monotonic() < deadline, "resumed node not routable again"
            time.sleep(0.05)
    # Under concurrent load (sequential requests would all go to whichever node scores best)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda _: _ask(net["gws"][0], "red:fake", tokens=10, delay_ms=50), range(36)))
    served = Counter(r.headers["x-tooti-node"] for r in replies)
    assert frozen.peer_id in served, httpx.get(net["gws"][0].http + "/v1/network/nodes", trust_env=False).text
