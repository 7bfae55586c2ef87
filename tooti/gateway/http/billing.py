"""What a request is billed: the backend's usage when it reports it and it is plausible,
otherwise what the gateway itself delivered.

Counting a stream: one content delta ≈ one token. OpenAI-style servers (llama.cpp, vLLM,
SGLang) send one token per SSE event, so the count is exact for them up to tokens that decode
to no text (a partial UTF-8 sequence, special tokens), which a server may merge with the next
event: it undercounts by those, never overcounts. Prompt tokens, when the backend did not say,
are estimated as one per 4 bytes of the request body, at most the body's length: an overestimate
for JSON with much markup, bounded by what the client sent.

A node's claim is checked against what the gateway saw: completion tokens may not exceed the
client's ``max_tokens`` (when set), nor what the relayed bytes could carry (a streamed token
is at least one event; a non-streamed one at least one byte); prompt tokens may not exceed the
request's bytes plus a template allowance. A claim outside that is clamped and flagged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tooti.wire import pb

_TEMPLATE_SLACK = 512  # prompt tokens a chat template may add beyond the body's bytes
_STREAM_SLACK = 16  # events a stream may merge (see module doc)
_MAX_TOKENS = 1 << 40  # no real request comes near; keeps sums far from int64 overflow


@dataclasses.dataclass(slots=True)
class Bill:
    prompt_tokens: int
    completion_tokens: int
    flags: str = ""  # "" | "estimated" | "clamped" (comma-joined)


class StreamCounter:
    """Counts content deltas in relayed SSE bytes without parsing JSON."""

    __slots__ = ("deltas",)

    _MARKS = (
        b'"content":"',
        b'"content": "',
        b'"reasoning_content":"',
        b'"text":"',
        b'"text": "',
        b'"type":"response.output_text.delta"',
    )
    _EMPTY = (b'"content":""', b'"content": ""', b'"text":""', b'"text": ""', b'"reasoning_content":""')

    def __init__(self) -> None:
        self.deltas = 0

    def feed(self, block: bytes) -> None:
        n = 0
        for mark in self._MARKS:
            n += block.count(mark)
        for empty in self._EMPTY:
            n -= block.count(empty)
        self.deltas += max(0, n)


def max_tokens_of(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def bill(
    usage: pb.Usage | None,
    *,
    request_bytes: int,
    max_tokens: int | None,
    delivered_deltas: int | None,
    delivered_bytes: int,
    complete: bool,
) -> Bill:
    """The figures to record. ``delivered_deltas`` is None for non-streamed answers;
    ``complete`` says whether the answer reached the client whole."""
    prompt_est = min(request_bytes, max(1, request_bytes // 4))
    seen_cap = (
        delivered_deltas + _STREAM_SLACK if delivered_deltas is not None else delivered_bytes + _STREAM_SLACK
    )
    flags: list[str] = []
    if usage is None or not complete:
        # No report, or the client did not get it all: bill what was delivered.
        prompt = usage.prompt_tokens if usage is not None else prompt_est
        completion = delivered_deltas if delivered_deltas is not None else 0
        flags.append("estimated" if usage is None else "delivered")
        if usage is not None and not 0 <= prompt <= request_bytes + _TEMPLATE_SLACK:
            prompt = prompt_est
            flags.append("clamped")
        return Bill(_bound(prompt), _bound(completion), ",".join(flags))
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if not 0 <= prompt <= request_bytes + _TEMPLATE_SLACK:
        prompt = prompt_est if prompt > 0 else 0
        flags.append("clamped")
    limit = min(seen_cap, max_tokens) if max_tokens is not None else seen_cap
    if not 0 <= completion <= limit:
        completion = max(0, min(limit, delivered_deltas if delivered_deltas is not None else limit))
        flags.append("clamped")
    return Bill(_bound(prompt), _bound(completion), ",".join(flags))


def _bound(n: int) -> int:
    return max(0, min(int(n), _MAX_TOKENS))
