"""Splitting an OpenAI SSE byte stream into events, and picking usage out of it cheaply.

Only events that can carry usage are parsed (a substring test first), so relaying a long
stream costs a split per read, not a JSON parse per token.
"""

from __future__ import annotations

import json
from typing import Any

from tooti.openai_shapes import DONE, error_json

from .base import Usage

__all__ = ["DONE", "EventSplitter", "error_body", "inspect_event", "sse", "usage_from"]


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
    """Usage of a chat/completions/embeddings document or chunk, or of a Responses API
    document or its ``response.completed`` event (``input_tokens``/``output_tokens``)."""
    u = obj.get("usage")
    if not isinstance(u, dict) and isinstance(obj.get("response"), dict):
        u = obj["response"].get("usage")
    if not isinstance(u, dict):
        return None
    prompt = _count(u.get("prompt_tokens", u.get("input_tokens")))
    completion = _count(u.get("completion_tokens", u.get("output_tokens")))
    return Usage(prompt, completion, _count(u.get("total_tokens")) or prompt + completion)


def _count(value: object) -> int:
    """A token count as reported; anything but a non-negative integer counts as 0 (the
    gateway checks counts against what it relayed anyway)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def inspect_event(event: bytes) -> tuple[Usage | None, bool]:
    """(usage carried by the event, whether the event is a usage-only chunk with no choices)."""
    if b'"usage"' not in event:
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


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def error_body(message: str, *, type_: str = "api_error", code: str | None = None) -> bytes:
    """An OpenAI error document (the shape is defined once, in ``tooti.openai_shapes``)."""
    return error_json(500, message, code=code, type_=type_)
