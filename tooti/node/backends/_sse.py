"""Splitting an OpenAI SSE byte stream into events, and picking usage out of it cheaply.

Only events that can carry usage are parsed (a substring test first), and a block of events
with nothing to drop or record is relayed as it came, so relaying a long stream costs a few
substring tests per read, not a split, a copy or a JSON parse per token.
"""

from __future__ import annotations

import json
from typing import Any

from tooti.openai_shapes import DONE, error_json

from .base import Usage

__all__ = ["DONE", "EventSplitter", "error_body", "inspect_event", "relay_block", "sse", "usage_from"]


class EventSplitter:
    """Feed the body bytes of each read; get back one block of the complete events they finish.

    The block is the bytes as they came, from the first unfinished event up to the last blank
    line (``\\n\\n``), so a read that completes events costs one ``rfind`` and, at most, one
    slice, and the unfinished rest is only joined when its event completes (an event split over
    many reads is not re-scanned or copied per read). CRLF line ends are turned into LF as the
    bytes arrive (a CR at the end of a read waits for the next one).
    """

    __slots__ = ("_cr", "_parts", "pending_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the unfinished event, as it arrived
        self.pending_size = 0
        self._cr = False

    def feed(self, data: bytes) -> bytes:
        if self._cr:
            data, self._cr = b"\r" + data, False
        if b"\r" in data:
            if data[-1] == 13:
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n")
        parts = self._parts
        cut = data.rfind(b"\n\n")
        if cut >= 0:
            cut += 2
        elif parts and data[:1] == b"\n" and parts[-1][-1:] == b"\n":
            cut = 1  # the blank line straddles two reads
        else:
            if data:
                parts.append(data)
                self.pending_size += len(data)
            return b""
        if cut == len(data):
            done, rest = data, b""
        else:
            done, rest = data[:cut], data[cut:]
        if parts:
            parts.append(done)
            done = b"".join(parts)
            parts.clear()
        if rest:
            parts.append(rest)
        self.pending_size = len(rest)
        return done

    @property
    def pending(self) -> bytes:
        """The bytes of the unfinished event."""
        return b"".join(self._parts) + (b"\r" if self._cr else b"")


def relay_block(block: bytes, client_usage: bool) -> tuple[bytes, Usage | None]:
    """What to relay of a block of complete events, and the usage it reported.

    ``[DONE]`` and blank events are dropped, and so is a usage-only chunk when the client did
    not ask for one. A block with none of those (nearly every block of a token stream) is
    relayed as it is, after a few substring tests.
    """
    if block[0] != 10 and b"[DONE]" not in block and b"\n\n\n" not in block and not _has_usage_object(block):
        return block, None
    out: list[bytes] = []
    usage: Usage | None = None
    for event in block.split(b"\n\n"):
        if not event.strip() or event.startswith(DONE):
            continue
        found, usage_only = inspect_event(event)
        if found is not None:
            usage = found
        if usage_only and not client_usage:
            continue
        out.append(event + b"\n\n")
    return b"".join(out), usage


def _has_usage_object(block: bytes) -> bool:
    at = block.find(b'"usage"')
    while at >= 0:
        if _usage_object_at(block, at + 7):
            return True
        at = block.find(b'"usage"', at + 7)
    return False


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
    """An OpenAI error document (the shape is defined once, in ``tooti.openai_shapes``)."""
    return error_json(500, message, code=code, type_=type_)
