"""Splitting an OpenAI SSE byte stream into events, and picking usage out of it cheaply.

Only events that can carry usage are parsed (a substring test first), so relaying a long
stream costs a split per read, not a JSON parse per token.
"""

from __future__ import annotations

import json
from typing import Any

from .base import Usage

DONE = b"data: [DONE]"


class EventSplitter:
    """Feed raw bytes; get back the complete events they finish (each ending in a blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data
        if b"\r\n" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = buf.split(b"\n\n")
        self._buf = events.pop()
        return [e for e in events if e.strip()]

    @property
    def pending(self) -> bytes:
        return self._buf


def usage_from(obj: dict[str, Any]) -> Usage | None:
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    return Usage(prompt, completion, int(u.get("total_tokens") or prompt + completion))


def inspect_event(event: bytes) -> tuple[Usage | None, bool]:
    """(usage carried by the event, whether the event is a usage-only chunk with no choices)."""
    # Parse only an event whose "usage" is an object: include_usage streams carry `"usage":null`
    # in every chunk, and parsing those would be a JSON parse per token.
    at = event.find(b'"usage"')
    while at >= 0 and not _usage_object_at(event, at + 7):
        at = event.find(b'"usage"', at + 7)
    if at < 0:
        return None, False
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                obj = json.loads(line[5:])
            except ValueError:
                return None, False
            if isinstance(obj, dict):
                return usage_from(obj), obj.get("choices") == []
    return None, False


def _usage_object_at(event: bytes, i: int) -> bool:
    """Whether the value after the ``"usage"`` key ending at ``i`` is an object (``: {``)."""
    n = len(event)
    while i < n and event[i] in b" \t:":
        i += 1
    return i < n and event[i] == 0x7B  # "{"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def error_body(message: str, *, type_: str = "api_error", code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()
