"""Picking usage out of an OpenAI SSE stream without a JSON parse per token."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tooti.node.backends import _sse
from tooti.node.backends.base import Usage


def test_usage_null_chunks_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Any] = []
    real_loads = json.loads

    def counting_loads(raw: Any) -> Any:
        parsed.append(raw)
        return real_loads(raw)

    monkeypatch.setattr(_sse.json, "loads", counting_loads)
    token = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"\\"usage\\": {"}}],"usage":null}'
    for _ in range(100):
        assert _sse.inspect_event(token) == (None, False)
    assert parsed == []
    spaced = b'data: {"choices":[],"usage" : {"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}'
    assert _sse.inspect_event(spaced) == (Usage(2, 3, 5), True)
    late = b'data: {"choices":[{"delta":{"content":"\\"usage\\""}}],"usage":{"prompt_tokens":1}}'
    assert _sse.inspect_event(late) == (Usage(1, 0, 1), False)
    assert len(parsed) == 2
