"""An Ollama-native backend through the whole path: OpenAI SDK -> gateway -> node -> Ollama API.

Ollama itself cannot be installed here; the node talks to a faithful stand-in written from
Ollama's published API (tests/standins/ollama.py), started as its own process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models
from tests.openapi import validate

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def ollama_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("ollama")
    port = _procs.free_port()
    standin = _procs.Proc(
        [sys.executable, "-m", "tests.standins.ollama", "--port", str(port)], log=tmp / "ollama.log"
    )
    url = standin.wait_line("listening on").split()[-1]
    gw = _procs.start_gateway(tmp, auth="open")
    node = _procs.start_node(tmp, "ollama-node", gateways=[gw], backend={"type": "ollama", "base_url": url})
    models = httpx.get(url + "/api/tags", trust_env=False).json()["models"]
    names = {m["name"] for m in models}
    wait_for_models(gw.base_url, names)
    yield {"gw": gw, "url": url, "model": sorted(names)[0]}
    for p in (node.proc, gw.proc, standin):
        p.stop()


def test_ollama_streaming_with_usage(ollama_net: dict) -> None:
    client = openai.OpenAI(base_url=ollama_net["gw"].base_url, api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=ollama_net["model"],
            messages=[{"role": "user", "content": "alpha beta gamma delta"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["alpha", "beta", "gamma", "delta"]
    done = httpx.get(ollama_net["url"] + "/_last_done", trust_env=False).json()
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == done["prompt_eval_count"]
    assert chunks[-1].usage.completion_tokens == done["eval_count"]


def test_ollama_tool_calls_streaming(ollama_net: dict) -> None:
    body = {
        "model": ollama_net["model"],
        "stream": True,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": "what is the weather in Paris"}],
    }
    events = []
    with httpx.stream(
        "POST", ollama_net["gw"].base_url + "/chat/completions", json=body, timeout=30, trust_env=False
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    docs = [json.loads(e) for e in events[:-1]]
    for d in docs:
        validate("CreateChatCompletionStreamResponse", d)
    calls = [tc for d in docs for c in d["choices"] for tc in (c["delta"].get("tool_calls") or [])]
    assert calls and calls[0]["function"]["name"] == "get_weather"
    args = json.loads("".join(tc["function"].get("arguments") or "" for tc in calls))
    assert isinstance(args, dict)
    assert [c["finish_reason"] for d in docs for c in d["choices"] if c["finish_reason"]] == ["tool_calls"]
    sent = httpx.get(ollama_net["url"] + "/_last_request", trust_env=False).json()
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_ollama_non_streaming(ollama_net: dict) -> None:
    client = openai.OpenAI(base_url=ollama_net["gw"].base_url, api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=ollama_net["model"], messages=[{"role": "user", "content": "one two"}], max_tokens=1, seed=3
    )
    validate("CreateChatCompletionResponse", json.loads(raw.http_response.content))
    out = raw.parse()
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 1
    sent = httpx.get(ollama_net["url"] + "/_last_request", trust_env=False).json()
    assert sent["options"]["num_predict"] == 1 and sent["options"]["seed"] == 3
