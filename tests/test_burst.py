"""Bursts queue instead of failing: real llama.cpp behind one node with max_concurrency 4.

The official SDK with ``max_retries=0`` sees every error, so 16/16 means the gateway itself
held the 12 requests the node had no room for. Then one request every 0.25 s must never be
refused: an idle node is never "full" because of a stale heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models


@pytest.fixture(scope="module")
def one_node(llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_procs.Gateway]:
    tmp = tmp_path_factory.mktemp("burst")
    gw = _procs.start_gateway(tmp, auth="open")
    node = _procs.start_node(
        tmp, "n", gateways=[gw], backend={"type": "openai", "base_url": llama}, node={"max_concurrency": 4}
    )
    wait_for_models(gw.base_url, {"smollm2"})
    yield gw
    node.proc.stop()
    gw.proc.stop()


def _ask(client: openai.OpenAI, i: int) -> str:
    out = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=12
    )
    return out.choices[0].finish_reason or ""


def test_a_burst_of_16_all_succeed_then_steady_traffic_gets_no_503(one_node: _procs.Gateway) -> None:
    client = openai.OpenAI(base_url=one_node.base_url, api_key="x", max_retries=0, timeout=120)
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: _try(client, i), range(16)))
    burst_s = time.monotonic() - started
    assert results.count("ok") == 16, results
    refused = 0
    for i in range(40):
        if _try(client, i) != "ok":
            refused += 1
        time.sleep(0.25)
    assert refused == 0
    nodes = httpx.get(one_node.base_url + "/network/nodes", trust_env=False).json()
    assert nodes["queue"]["depth"] == 0 and nodes["data"][0]["in_flight"] == 0
    print(f"burst of 16: 16/16 in {burst_s:.1f} s; 40 sequential: {40 - refused}/40")


def _try(client: openai.OpenAI, i: int) -> str:
    try:
        _ask(client, i)
        return "ok"
    except openai.APIStatusError as exc:
        return str(exc.status_code)
