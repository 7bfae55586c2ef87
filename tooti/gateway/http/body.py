"""Reading a request body: bounded in size and time, parsed once, checked as far as routing and
billing need. Every byte is hostile: a limit crossed is a 4xx, never a 500."""

from __future__ import annotations

import json
from typing import Any

import trio

from ..errors import HTTPError

Receive = Any  # hypercorn's ASGIReceiveCallable

# Bodies come fast from real clients; one that trickles slower than this is holding a slot.
BODY_TIMEOUT = 60.0
# JSON nesting deeper than any OpenAI request needs; deeper bodies are refused before
# Python's recursive decoder (or the node's) sees them.
MAX_DEPTH = 64


class ClientGone(Exception):
    """The client disconnected before its body was read."""


class BodyTooLarge(Exception):
    pass


def too_large(limit: int) -> HTTPError:
    """The answer to a body over ``limit`` bytes."""
    return HTTPError(413, f"request body exceeds {limit} bytes", code="request_too_large")


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read(receive: Receive, limit: int, *, seconds: float = BODY_TIMEOUT) -> bytes:
    """The whole body, or BodyTooLarge past ``limit`` bytes, HTTPError 408 past ``seconds``,
    ClientGone if the client left."""
    parts: list[bytes] = []
    size = 0
    with trio.move_on_after(seconds) as timer:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)
    assert timer.cancelled_caught
    raise HTTPError(408, f"the request body did not arrive within {seconds:g} s", code="timeout")


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 ``invalid_json`` otherwise, also for nesting deeper than
    MAX_DEPTH (the node re-encodes the body, and Python's encoder recurses)."""
    try:
        body = json.loads(raw)
    except RecursionError:  # deeper than the interpreter's limit: the C decoder refuses
        raise _too_deep_error() from None
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object", code="invalid_json")
    # Cheap pre-check on the bytes; the walk costs one step per container, not per byte.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(body, MAX_DEPTH):
        raise _too_deep_error()
    return body


def _too_deep_error() -> HTTPError:
    return HTTPError(400, f"request body nests deeper than {MAX_DEPTH} levels", code="invalid_json")


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return False


def check_messages(body: dict[str, Any]) -> None:
    """Content parts of chat messages must be what the API allows; a malformed one is the
    client's error (400 with ``param``), not something to send to a node and retry."""
    messages = body.get("messages")
    if messages is None:
        return
    if not isinstance(messages, list):
        raise HTTPError(400, "'messages' must be an array", code="invalid_request", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise HTTPError(
                400, "a message must be an object", code="invalid_request", param=f"messages[{i}]"
            )
        content = msg.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise HTTPError(
                400,
                "'content' must be a string or an array of content parts",
                code="invalid_request",
                param=f"messages[{i}].content",
            )
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise HTTPError(
                    400, "a content part must be an object with a 'type'", code="invalid_request", param=where
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise HTTPError(
                    400,
                    "a text part's 'text' must be a string",
                    code="invalid_request",
                    param=where + ".text",
                )
