"""OpenAI's Responses API and other routes through tooti to real llama.cpp, with the SDK.

What tooti relays must look like what the backend sends directly: the same document keys,
the same sequence of stream event types, every event passed through, and the same verdict
from OpenAI's OpenAPI document (llama.cpp's own documents omit some fields OpenAI always
sends; tooti adds nothing and drops nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models
from tests.openapi import ValidationError, validate


@pytest.fixture(scope="module")
def net(llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("responses")
    gw = _procs.start_gateway(tmp, auth="open")
    node = _procs.start_node(tmp, "n", gateways=[gw], backend={"type": "openai", "base_url": llama})
    wait_for_models(gw.base_url, {"smollm2"})
    loop = _procs.start_node(tmp, "loop", gateways=[gw], backend={"type": "loopback"})
    wait_for_models(gw.base_url, {"loopback"})
    yield {"gw": gw, "llama": llama}
    for p in (node.proc, loop.proc, gw.proc):
        p.stop()


def _verdict(schema: str, doc: dict) -> str:
    try:
        validate(schema, doc)
    except ValidationError as exc:
        return f"invalid at {list(exc.absolute_path)}: {exc.validator}"
    return "valid"


def test_responses_non_streaming(net: dict) -> None:
    client = openai.OpenAI(base_url=net["gw"].base_url, api_key="x", max_retries=0)
    raw = client.responses.with_raw_response.create(model="smollm2", input="Say hi.", max_output_tokens=8)
    ours = json.loads(raw.http_response.content)
    direct = httpx.post(
        net["llama"] + "/v1/responses",
        json={"model": "smollm2", "input": "Say hi.", "max_output_tokens": 8},
        timeout=60,
        trust_env=False,
    ).json()
    assert set(ours) == set(direct)
    assert [o["type"] for o in ours["output"]] == [o["type"] for o in direct["output"]]
    assert _verdict("Response", ours) == _verdict("Response", direct)
    parsed = raw.parse()
    assert parsed.output_text and parsed.usage.output_tokens <= 8


def test_responses_streaming_passes_every_event(net: dict) -> None:
    client = openai.OpenAI(base_url=net["gw"].base_url, api_key="x", max_retries=0)
    body = {"model": "smollm2", "input": "Say hi.", "max_output_tokens": 6, "temperature": 0, "stream": True}
    with client.responses.create(**{k: v for k, v in body.items() if k != "stream"}, stream=True) as stream:
        ours = [event.type for event in stream]
    direct = []
    with httpx.stream("POST", net["llama"] + "/v1/responses", json=body, timeout=60, trust_env=False) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                direct.append(json.loads(line[6:])["type"])
    assert ours == direct
    assert ours[0] == "response.created" and ours[-1] == "response.completed"


def test_a_node_whose_backend_lacks_the_route_says_so(net: dict) -> None:
    """Nodes declare the routes their backend relays; /v1/models says per model, and a route
    no node serving the model has is a 501 in OpenAI's error shape."""
    models = {m["id"]: m for m in httpx.get(net["gw"].base_url + "/models", trust_env=False).json()["data"]}
    validate("ListModelsResponse", {"object": "list", "data": list(models.values())})
    assert models["loopback"]["routes"] == ["chat", "completions", "embeddings"]
    assert {"responses", "passthrough"} <= set(models["smollm2"]["routes"])
    client = openai.OpenAI(base_url=net["gw"].base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model="loopback", input="hi")
    assert info.value.status_code == 501
    validate("ErrorResponse", info.value.response.json())
    assert info.value.code == "unsupported_route"
    nodes = httpx.get(net["gw"].base_url + "/network/nodes", trust_env=False).json()["data"]
    assert all(n["failures"] == 0 for n in nodes)


def test_passthrough_route_tokenize(net: dict) -> None:
    """Any other route a backend serves, relayed by method and path: llama.cpp's /tokenize."""
    r = httpx.post(
        net["gw"].http + "/tokenize", json={"model": "smollm2", "content": "hello world"}, trust_env=False
    )
    direct = httpx.post(net["llama"] + "/tokenize", json={"content": "hello world"}, trust_env=False)
    assert r.status_code == 200, r.text
    assert r.json() == direct.json()
