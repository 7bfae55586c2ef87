"""The inference tunnel, in process: the gateway's relay and the node's service over trio memory
streams (no libp2p, no sockets), with a scripted backend.

What is proven here (not timed): many exchanges share one tunnel and one that is never read
holds up only itself; a reset cancels exactly its backend request; a tunnel's death fails only
its own exchanges; large bodies and answers cross in pieces; every limit a hostile peer could
cross ends the tunnel (or the exchange) instead of costing memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from tooti.gateway.relay import Exchange, NodeFailure, StreamPool, start_exchange
from tooti.node.backends.base import Backend, Reply, Request, Usage
from tooti.node.service import InferenceService
from tooti.node.stats import NodeStats
from tooti.p2p import tunnel
from tooti.p2p.framing import encode
from tooti.wire import pb

# ---------------------------------------------------------------------------------------- fakes


class _Conn:
    def __init__(self, peer_id: Any) -> None:
        self.peer_id = peer_id


class MemNetStream:
    """The slice of libp2p's INetStream the tunnel uses, over one end of a trio memory stream."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, peer: str) -> None:
        self._s = stream
        self.muxed_conn = _Conn(peer)
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        if self.was_reset:
            raise StreamReset("reset")
        try:
            data = await self._s.receive_some(n)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise StreamReset("reset") from None
        if not data:
            raise StreamEOF("eof")
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self._s.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise StreamReset("reset") from None

    async def reset(self) -> None:
        self.was_reset = True
        await trio.aclose_forcefully(self._s)

    async def close(self) -> None:
        await self._s.send_eof()


@dataclass
class Script:
    """What the fake backend answers for one request (by the body's ``"script"`` key)."""

    blocks: list[bytes] = field(default_factory=list)
    gate: trio.Event | None = None  # wait for this before each block after the first
    hold_head: trio.Event | None = None  # wait for this before answering at all
    produced: int = 0
    cancelled: bool = False
    finished: bool = False


class ScriptedBackend(Backend):
    kind = "scripted"

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.requests: list[Request] = []

    async def list_models(self) -> list[str]:
        return ["m"]

    async def healthy(self) -> bool:
        return True

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Reply]:
        self.requests.append(request)
        script = self.scripts[request.body["script"]]
        if script.hold_head is not None:
            try:
                await script.hold_head.wait()
            except trio.Cancelled:
                script.cancelled = True
                raise

        async def blocks() -> AsyncIterator[bytes]:
            for i, block in enumerate(script.blocks):
                if i and script.gate is not None:
                    await script.gate.wait()
                script.produced += len(block)
                yield block

        try:
            yield Reply(200, "text/event-stream", blocks(), Usage(1, 2, 3))
            script.finished = True
        except trio.Cancelled:
            script.cancelled = True
            raise


class FakeHost:
    """``new_stream`` connects a memory stream pair to the node's handler for that peer."""

    def __init__(self, nursery: trio.Nursery, services: dict[str, InferenceService], gateway: str) -> None:
        self._nursery = nursery
        self._services = services
        self._gateway = gateway
        self.node_ends: dict[str, list[MemNetStream]] = {}
        self.gateway_ends: dict[str, list[MemNetStream]] = {}

    async def new_stream(self, peer_id: Any, protocols: list[str]) -> MemNetStream:
        peer = str(peer_id)
        if peer not in self._services:
            raise ConnectionError("no such peer")
        a, b = trio.testing.memory_stream_pair()
        ours, theirs = MemNetStream(a, peer), MemNetStream(b, self._gateway)
        self.gateway_ends.setdefault(peer, []).append(ours)
        self.node_ends.setdefault(peer, []).append(theirs)
        self._nursery.start_soon(self._services[peer].handle_stream, theirs)
        return ours


# libp2p peer ids (base58 of an identity multihash); ID.from_base58 must accept them.
NODE_A = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
NODE_B = "12D3KooWQjtZwRMTcCRPVAMJ4uMg7kcvCBNqrB2h2i1a1tXmKCmV"
GATEWAY = "12D3KooWHLtdD1z2ud9gMQcv8Kk4SdMTXxQ5DAc3tXPezQjQkz2Q"


@dataclass
class Net:
    pool: StreamPool
    host: FakeHost
    backends: dict[str, ScriptedBackend]
    stats: dict[str, NodeStats]


@pytest.fixture
async def net(nursery: trio.Nursery) -> Net:
    backends = {p: ScriptedBackend() for p in (NODE_A, NODE_B)}
    stats = {p: NodeStats(capacity=64) for p in (NODE_A, NODE_B)}
    services = {
        p: InferenceService(
            backends[p], stats[p], models=lambda: {"m"}, allowed_peer=lambda peer: peer == GATEWAY
        )
        for p in (NODE_A, NODE_B)
    }
    host = FakeHost(nursery, services, GATEWAY)
    pool = StreamPool(host)  # type: ignore[arg-type]  # FakeHost has the one method the pool uses
    nursery.start_soon(pool.run)
    await trio.testing.wait_all_tasks_blocked()
    return Net(pool, host, backends, stats)


def request(script: str, body: bytes | None = None) -> pb.InferenceRequest:
    raw = body if body is not None else json.dumps({"model": "m", "stream": True, "script": script}).encode()
    return pb.InferenceRequest(request_id=script, route=pb.ROUTE_CHAT, body=raw, model="m")


async def start(net: Net, peer: str, script: str, **kw: Any) -> Exchange:
    return await start_exchange(net.pool, peer, request(script, **kw), first_byte_timeout=10, idle_timeout=10)


async def read_all(ex: Exchange) -> bytes:
    out = bytearray()
    async for block in ex.data():
        out += block
    await ex.close()
    return bytes(out)


# ---------------------------------------------------------------------------------------- tests


def test_hand_encoded_frames_are_protobuf() -> None:
    for rid in (1, 127, 128, 300, 2**40):
        for data in (b"", b"x", b"y" * 200, b"z" * 70_000):
            for more in (False, True):
                expect = encode(pb.TunnelFrame(request=rid, data=data, more=more))
                assert tunnel.data_frame(rid, data, more=more) == expect
        assert tunnel.credit_frame(rid, 65536) == encode(pb.TunnelFrame(request=rid, credit=65536))


async def test_many_exchanges_one_tunnel_a_stalled_client_holds_up_only_itself(net: Net) -> None:
    backend = net.backends[NODE_A]
    # The stalled one offers 4x its window; the others 200 tokens each.
    backend.scripts["stalled"] = Script(blocks=[b"s" * 1000] * (4 * tunnel.WINDOW // 1000))
    for i in range(30):
        backend.scripts[f"s{i}"] = Script(blocks=[b"data: tok%d\n\n" % j for j in range(200)])
    stalled = await start(net, NODE_A, "stalled")
    results: dict[str, bytes] = {}

    async def one(name: str) -> None:
        results[name] = await read_all(await start(net, NODE_A, name))

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(30):
                n.start_soon(one, f"s{i}")
    for i in range(30):
        assert results[f"s{i}"] == b"".join(b"data: tok%d\n\n" % j for j in range(200))
    assert len(net.host.gateway_ends[NODE_A]) == 1  # one tunnel for all 31 exchanges
    await trio.testing.wait_all_tasks_blocked()
    # The stalled exchange's backend read stopped at its window: nothing more was produced.
    script = backend.scripts["stalled"]
    assert tunnel.WINDOW - 1000 <= script.produced <= tunnel.WINDOW + 1000
    assert not script.finished and not script.cancelled
    # Once its client reads, it finishes too.
    with trio.fail_after(30):
        assert len(await read_all(stalled)) == 4 * tunnel.WINDOW // 1000 * 1000
    assert stalled.end is not None and stalled.end.usage.total_tokens == 3


async def test_reset_cancels_exactly_its_backend_request(net: Net) -> None:
    backend = net.backends[NODE_A]
    gate = trio.Event()
    backend.scripts["a"] = Script(blocks=[b"a1", b"a2", b"a3"], gate=gate)
    backend.scripts["b"] = Script(blocks=[b"b1", b"b2", b"b3"], gate=gate)
    a = await start(net, NODE_A, "a")
    b = await start(net, NODE_A, "b")
    ait = a.data().__aiter__()
    assert await ait.__anext__() == b"a1"
    await a.close()  # the client left mid-stream
    with trio.fail_after(10):
        while not backend.scripts["a"].cancelled:
            await trio.sleep(0.01)
    gate.set()
    with trio.fail_after(10):
        assert await read_all(b) == b"b1b2b3"
    assert backend.scripts["b"].finished and not backend.scripts["b"].cancelled
    assert net.stats[NODE_A].in_flight == 0


async def test_killing_a_tunnel_fails_only_its_exchanges(net: Net) -> None:
    gate = trio.Event()
    for peer in (NODE_A, NODE_B):
        net.backends[peer].scripts["x"] = Script(blocks=[b"1", b"2"], gate=gate)
    on_a = await start(net, NODE_A, "x")
    on_b = await start(net, NODE_B, "x")
    await net.host.gateway_ends[NODE_A][0].reset()  # the path to node A dies
    with pytest.raises(NodeFailure), trio.fail_after(10):
        await read_all(on_a)
    with trio.fail_after(10):
        while not net.backends[NODE_A].scripts["x"].cancelled:
            await trio.sleep(0.01)
    gate.set()
    with trio.fail_after(10):
        assert await read_all(on_b) == b"12"
    # A new exchange with node A opens a new tunnel.
    net.backends[NODE_A].scripts["y"] = Script(blocks=[b"again"])
    with trio.fail_after(10):
        assert await read_all(await start(net, NODE_A, "y")) == b"again"
    assert len(net.host.gateway_ends[NODE_A]) == 2


async def test_idle_and_first_byte_timeouts_reset_the_exchange(net: Net) -> None:
    backend = net.backends[NODE_A]
    backend.scripts["silent"] = Script(blocks=[b"first", b"never"], gate=trio.Event())
    backend.scripts["mute"] = Script(blocks=[b"x"], hold_head=trio.Event())
    ex = await start_exchange(net.pool, NODE_A, request("silent"), first_byte_timeout=10, idle_timeout=0.3)
    blocks = []
    with pytest.raises(trio.TooSlowError), trio.fail_after(10):
        async for block in ex.data():
            blocks.append(block)
    assert blocks == [b"first"]
    await ex.close()
    with pytest.raises(trio.TooSlowError), trio.fail_after(10):
        await start_exchange(net.pool, NODE_A, request("mute"), first_byte_timeout=0.3, idle_timeout=10)
    with trio.fail_after(10):  # both were reset: their backend requests are cancelled
        while not (backend.scripts["silent"].cancelled and backend.scripts["mute"].cancelled):
            await trio.sleep(0.01)


async def test_large_request_body_and_answer_cross_in_pieces(net: Net) -> None:
    big_answer = bytes(range(256)) * 8192  # 2 MiB in one backend block
    net.backends[NODE_A].scripts["big"] = Script(blocks=[big_answer])
    body = json.dumps({"model": "m", "stream": True, "script": "big", "pad": "p" * 300_000}).encode()
    with trio.fail_after(30):
        assert await read_all(await start(net, NODE_A, "big", body=body)) == big_answer
    assert net.backends[NODE_A].requests[-1].body["pad"] == "p" * 300_000


async def test_unknown_model_and_busy_answered_on_the_tunnel(net: Net) -> None:
    req = pb.InferenceRequest(request_id="r", route=pb.ROUTE_CHAT, body=b"{}", model="nope")
    ex = await start_exchange(net.pool, NODE_A, req, first_byte_timeout=10, idle_timeout=10)
    assert ex.head.status == 404
    await read_all(ex)
    assert ex.end is not None and ex.end.error.code == "model_not_found"


async def test_unreachable_node_is_a_node_failure(net: Net) -> None:
    with pytest.raises(NodeFailure):
        await start_exchange(
            net.pool,
            "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE",
            request("x"),
            first_byte_timeout=10,
            idle_timeout=10,
        )


async def test_node_refuses_a_peer_that_is_not_its_gateway(nursery: trio.Nursery) -> None:
    service = InferenceService(
        ScriptedBackend(), NodeStats(capacity=4), models=lambda: {"m"}, allowed_peer=lambda p: False
    )
    a, b = trio.testing.memory_stream_pair()
    theirs = MemNetStream(b, "someone")
    with trio.fail_after(10):
        await service.handle_stream(theirs)  # type: ignore[arg-type]
    assert theirs.was_reset


# ---- a hostile peer on the raw tunnel


async def _raw_node_tunnel(
    nursery: trio.Nursery, backend: Backend | None = None, allowed: Callable[[str], bool] = lambda p: True
) -> tuple[MemNetStream, MemNetStream, NodeStats, trio.Event]:
    stats = NodeStats(capacity=8)
    service = InferenceService(
        backend or ScriptedBackend(), stats, models=lambda: {"m"}, allowed_peer=allowed
    )
    a, b = trio.testing.memory_stream_pair()
    ours, theirs = MemNetStream(a, NODE_A), MemNetStream(b, GATEWAY)
    done = trio.Event()

    async def serve() -> None:
        await service.handle_stream(theirs)  # type: ignore[arg-type]
        done.set()

    nursery.start_soon(serve)
    return ours, theirs, stats, done


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([tunnel._uvarint(tunnel.MAX_FRAME + 1) + b"x"], id="frame-over-the-limit"),
        pytest.param([b"\xff\xff\xff\xff\xff\x01"], id="bad-varint"),
        pytest.param([b"\x03\xff\xff\xff"], id="malformed-protobuf"),
        pytest.param(
            [
                encode(pb.TunnelFrame(request=5, open=request("x"))),
                encode(pb.TunnelFrame(request=5, open=request("x"))),
            ],
            id="open-number-reused",
        ),
        pytest.param([tunnel.credit_frame(0, 1)], id="stray-credit-ignored-then-head-frame"),
        pytest.param(
            [encode(pb.TunnelFrame(request=1, reset=pb.TunnelReset(reason="r" * tunnel.MAX_CONTROL_FRAME)))],
            id="control-frame-over-its-limit",
        ),
    ],
)
async def test_node_ends_the_tunnel_on_a_protocol_violation(
    nursery: trio.Nursery, frames: list[bytes]
) -> None:
    backend = ScriptedBackend()
    backend.scripts["x"] = Script(blocks=[b"1"], gate=trio.Event())
    ours, _theirs, stats, done = await _raw_node_tunnel(nursery, backend)
    for f in frames:
        await ours.write(f)
    if frames[0] == tunnel.credit_frame(0, 1):
        # A credit for an exchange the node does not know is dropped; a head from a gateway is not.
        await ours.write(encode(pb.TunnelFrame(request=1, head=pb.ResponseHead(status=200))))
    with trio.fail_after(10):
        await done.wait()
    assert stats.bad_frames == 1


async def test_node_ends_the_tunnel_when_credit_overflows_the_window(nursery: trio.Nursery) -> None:
    backend = ScriptedBackend()
    backend.scripts["x"] = Script(blocks=[b"1", b"2"], gate=trio.Event())
    ours, _theirs, stats, done = await _raw_node_tunnel(nursery, backend)
    await ours.write(encode(pb.TunnelFrame(request=1, open=request("x"))))
    await trio.testing.wait_all_tasks_blocked()
    await ours.write(tunnel.credit_frame(1, 100))  # 1 byte was sent: 100 bytes of credit are not owed
    with trio.fail_after(10):
        await done.wait()
    assert stats.bad_frames == 1
    assert backend.scripts["x"].cancelled


async def test_oversized_request_body_resets_only_that_exchange(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tooti.node.service as service_module

    monkeypatch.setattr(service_module, "MAX_REQUEST_BODY", 100_000)
    ours, _theirs, stats, done = await _raw_node_tunnel(nursery)
    first = request("x", body=b"{" + b" " * 60_000)
    await ours.write(encode(pb.TunnelFrame(request=1, open=first, more=True)))
    await ours.write(tunnel.data_frame(1, b" " * 60_000, more=True))
    received = b""
    with trio.fail_after(10):
        while b"too large" not in received:
            received += await ours.read(65536)
    assert not done.is_set() and stats.bad_frames == 0


async def test_too_much_body_on_one_tunnel_ends_it(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tooti.node.service as service_module

    monkeypatch.setattr(service_module, "MAX_ASSEMBLING", 300_000)
    ours, _theirs, stats, done = await _raw_node_tunnel(nursery)
    for rid in range(1, 6):  # five bodies of 64 KiB each, none finished
        await ours.write(
            encode(pb.TunnelFrame(request=rid, open=request("x", body=b" " * 65_536), more=True))
        )
    with trio.fail_after(10):
        await done.wait()
    assert stats.bad_frames == 1


async def test_gateway_ends_a_tunnel_whose_node_overruns_the_window(nursery: trio.Nursery) -> None:
    # A hostile "node": answers the head, then sends more data than the window allows.
    a, b = trio.testing.memory_stream_pair()
    ours = MemNetStream(a, NODE_A)
    node = MemNetStream(b, GATEWAY)

    class OneStreamHost:
        async def new_stream(self, peer_id: Any, protocols: list[str]) -> MemNetStream:
            return ours

    pool = StreamPool(OneStreamHost())  # type: ignore[arg-type]
    nursery.start_soon(pool.run)
    await trio.testing.wait_all_tasks_blocked()

    async def hostile() -> None:
        await node.read(65536)  # the open frame
        await node.write(encode(pb.TunnelFrame(request=1, head=pb.ResponseHead(status=200))))
        for _ in range(tunnel.WINDOW // tunnel.MAX_DATA + 1):
            await node.write(tunnel.data_frame(1, b"x" * tunnel.MAX_DATA))

    nursery.start_soon(hostile)
    with trio.fail_after(10):
        ex = await start_exchange(pool, NODE_A, request("x"), first_byte_timeout=10, idle_timeout=10)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(NodeFailure):
            await read_all(ex)
    assert ours.was_reset
