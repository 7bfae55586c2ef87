"""Failure behaviour through real processes, with a fault-injecting stand-in upstream.

The stand-in (tests/standins/openai_upstream.py) records what it received and counts
streams whose client went away, so "the backend request was cancelled" is observed at the
backend, not inferred.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from harness import procs as _procs
from tests._wait import until
from tests.conftest import wait_for_models
from tests.openapi import validate


def _upstream(tmp, name: str, *models: str) -> tuple[_procs.Proc, str]:
    args = [a for m in models for a in ("--model", m)]
    return _procs.start_backend("tests.standins.openai_upstream", tmp / f"{name}.log", *args)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("faults")
    up, up_url = _upstream(tmp, "upstream", "fake")
    solo, solo_url = _upstream(tmp, "solo", "solo")
    # A short queue deadline, so that "every node busy" is seen as a 503 within a test.
    gw = _procs.start_gateway(tmp, auth="open", extra={"admission": {"queue_timeout_sec": 1.0}})
    nodes = [
        _procs.start_node(tmp, "a", gateways=[gw], backend={"type": "openai", "base_url": up_url}),
        _procs.start_node(tmp, "b", gateways=[gw], backend={"type": "openai", "base_url": up_url}),
        _procs.start_node(
            tmp,
            "solo",
            gateways=[gw],
            backend={"type": "openai", "base_url": solo_url},
            node={"max_concurrency": 1},
        ),
    ]
    wait_for_models(gw.base_url, {"fake", "solo"})
    yield {"gw": gw, "up": up_url, "solo": solo_url, "nodes": nodes, "tmp": tmp}
    for p in [*(n.proc for n in nodes), gw.proc, up, solo]:
        p.stop()


def _stats(url: str) -> dict:
    return httpx.get(url + "/_stats", trust_env=False).json()


def test_every_field_reaches_the_backend(lab: dict) -> None:
    client = openai.OpenAI(base_url=lab["gw"].base_url, api_key="x", max_retries=0)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "w",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    client.chat.completions.create(
        model="fake",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        tools=tools,
        tool_choice="auto",
        max_tokens=7,
        response_format={"type": "json_object"},
        stop=["\n\n"],
        seed=42,
        temperature=0.3,
        top_p=0.9,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        user="u-1",
        logit_bias={"50256": -100},
        n=1,
        extra_body={"top_k": 5, "min_p": 0.05},
    )
    got = httpx.get(lab["up"] + "/_last_request", trust_env=False).json()["body"]
    assert got["tools"] == tools and got["tool_choice"] == "auto" and got["max_tokens"] == 7
    assert got["response_format"] == {"type": "json_object"} and got["stop"] == ["\n\n"]
    assert got["seed"] == 42 and got["temperature"] == 0.3 and got["top_p"] == 0.9
    assert got["presence_penalty"] == 0.1 and got["frequency_penalty"] == 0.2 and got["user"] == "u-1"
    assert got["logit_bias"] == {"50256": -100} and got["top_k"] == 5 and got["min_p"] == 0.05
    assert len(got["messages"]) == 2


def test_client_disconnect_cancels_backend_request(lab: dict) -> None:
    before = _stats(lab["up"])["cancelled"]
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "long"}],
        "stream": True,
        "x_fake": {"tokens": 2000, "delay_ms": 20},
    }
    with httpx.stream(
        "POST", lab["gw"].base_url + "/chat/completions", json=body, timeout=30, trust_env=False
    ) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 3:
                    break
    left_at = time.monotonic()
    took = until(lambda: _stats(lab["up"])["cancelled"] > before, timeout=10)
    assert took < 2.0, f"backend noticed the disconnect only after {took:.2f}s"
    assert _stats(lab["up"])["active"] == 0
    del left_at


def test_backend_dying_mid_stream_gives_a_terminated_valid_stream(lab: dict) -> None:
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "x_fake": {"tokens": 50, "fail": "after_tokens", "fail_after": 3},
    }
    events = _events(lab["gw"].base_url, body)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert "error" in error and error["error"]["code"]
    validate("ErrorResponse", error)
    for e in events[:-2]:
        validate("CreateChatCompletionStreamResponse", json.loads(e))
    # and the node and gateway keep serving
    ok = _events(
        lab["gw"].base_url, {"model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": True}
    )
    assert ok[-1] == "[DONE]" and all("error" not in json.loads(e) for e in ok[:-1])


def test_backend_error_status_is_passed_through(lab: dict) -> None:
    r = httpx.post(
        lab["gw"].base_url + "/chat/completions",
        trust_env=False,
        json={"model": "fake", "messages": [{"role": "user", "content": "x"}], "x_fake": {"status": 429}},
    )
    assert r.status_code == 429
    validate("ErrorResponse", r.json())


def test_busy_node_answers_503_with_retry_after(lab: dict) -> None:
    """A request for a full node waits in the gateway's queue for its deadline (1 s here),
    then gets 503 + Retry-After."""
    long = {
        "model": "solo",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "x_fake": {"tokens": 400, "delay_ms": 10},
    }
    with httpx.stream(
        "POST", lab["gw"].base_url + "/chat/completions", json=long, timeout=30, trust_env=False
    ) as r:
        lines = r.iter_lines()  # kept: dropping the iterator would close the response
        first = next(lines)  # the solo node's only slot is now taken
        assert r.status_code == 200 and first.startswith("data: "), first
        busy = httpx.post(
            lab["gw"].base_url + "/chat/completions",
            trust_env=False,
            json={"model": "solo", "messages": [{"role": "user", "content": "y"}]},
        )
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "no_capacity"
        validate("ErrorResponse", busy.json())


def test_node_killed_mid_stream(lab: dict) -> None:
    tmp = lab["tmp"]
    victim_up, victim_url = _upstream(tmp, "victim-up", "victim")
    victim = _procs.start_node(
        tmp, "victim", gateways=[lab["gw"]], backend={"type": "openai", "base_url": victim_url}
    )
    try:
        wait_for_models(lab["gw"].base_url, {"victim"})
        body = {
            "model": "victim",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "x_fake": {"tokens": 1000, "delay_ms": 10},
        }
        events: list[str] = []
        with httpx.stream(
            "POST", lab["gw"].base_url + "/chat/completions", json=body, timeout=30, trust_env=False
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 5:
                        victim.proc.kill()
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])
        assert err["error"]["code"] == "node_failure"
        # the gateway forgets the dead node at once and keeps serving the others
        wait_for_models(lab["gw"].base_url, {"victim"}, absent=True, timeout=5)
        client = openai.OpenAI(base_url=lab["gw"].base_url, api_key="x", max_retries=0)
        out = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content
    finally:
        victim.proc.stop()
        victim_up.stop()


def _events(base_url: str, body: dict) -> list[str]:
    out = []
    with httpx.stream("POST", base_url + "/chat/completions", json=body, timeout=30, trust_env=False) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(line[6:])
    return out
