"""Small pieces of HTTP/1.1 the server writes itself: the Date header, refusals, ASGI scopes."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

from tooti.openai_shapes import error_json

_REASONS = {400: b"Bad Request", 413: b"Payload Too Large", 431: b"Request Header Fields Too Large"}
_DATE: list[Any] = [0, b""]


def date() -> bytes:
    """The ``Date`` header's value, formatted once a second."""
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True).encode()
    return _DATE[1]


def refusal(exc: h11.RemoteProtocolError) -> bytes:
    """The whole answer to a request h11 could not parse (400, or 413/431 when h11 says so),
    in OpenAI's error shape, closing the connection."""
    status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
    body = error_json(status, f"malformed request: {exc}", code="invalid_request")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        _REASONS[status],
        len(body),
    )
    return head + b"connection: close\r\ndate: " + date() + b"\r\n\r\n" + body


def scope(
    request: h11.Request, client: tuple[str, int], server: tuple[str, int], extensions: dict[str, Any]
) -> dict[str, Any]:
    """The ASGI HTTP scope of ``request`` (ASGI 3.0, spec 2.3)."""
    path, _, query = request.target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode(),
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "path": unquote_to_bytes(path).decode("utf-8", "replace"),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),
        "client": client,
        "server": server,
        "extensions": extensions,
    }
