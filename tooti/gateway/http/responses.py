"""Writing ASGI responses: JSON documents, errors, and the pieces of a stream.

Every ``send`` goes through :func:`shielded`. Hypercorn closes a connection whose request body
was not read to the end *inside* the app's last ``send`` call, and delivers ``http.disconnect``
while doing so; a handler that cancels itself on that disconnect (quart-trio's
``TrioASGIHTTPConnection`` does, and so would a naive disconnect watcher) interrupts
Hypercorn between ``send_eof`` and ``aclose``: the socket stays open, the keep-alive
connection answers nothing more, and the server side sits in CLOSE-WAIT. Shielding the send
lets Hypercorn finish closing. (Hypercorn already shields the socket write itself, so this
adds no new way to block.)
"""

from __future__ import annotations

import json
from typing import Any

import trio

from tooti.openai_shapes import DONE_EVENT

from ..errors import HTTPError

Headers = list[tuple[bytes, bytes]]
Send = Any  # hypercorn's ASGISendCallable; kept loose to accept Quart's and ours
JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"


_CONTENT_TYPES = ("application/json", "text/event-stream", "text/plain", "audio/", "image/")


def content_type_of(value: str) -> bytes:
    """A node's content type when it is one the API uses, else JSON."""
    return value.encode("latin-1") if value.startswith(_CONTENT_TYPES) and value.isascii() else JSON


def shielded(send: Send) -> Send:
    """``send`` whose last message of a response cannot be interrupted. Only that one needs
    it (Hypercorn closes or recycles the connection inside it); the pieces of a stream go
    straight through, saving a cancel scope per chunk."""

    async def send_shielded(message: dict[str, Any]) -> None:
        if message.get("more_body"):
            await send(message)
            return
        with trio.CancelScope(shield=True):
            await send(message)

    return send_shielded


async def start(send: Send, status: int, content_type: bytes, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *headers],
        }
    )


async def body(send: Send, data: bytes, *, more: bool) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def whole(send: Send, status: int, content_type: bytes, data: bytes, headers: Headers) -> None:
    await start(send, status, content_type, [(b"content-length", str(len(data)).encode()), *headers])
    await body(send, data, more=False)


async def json_doc(send: Send, obj: Any, headers: Headers, status: int = 200) -> None:
    await whole(send, status, JSON, json.dumps(obj).encode(), headers)


async def error(send: Send, exc: HTTPError, headers: Headers, *, close: bool = False) -> None:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    if close:
        # The request body was not read: the connection cannot carry another request.
        extra.append((b"connection", b"close"))
    await whole(send, exc.status, JSON, json.dumps(exc.body()).encode(), [*headers, *extra])


async def end_stream(send: Send, failure: HTTPError | None, *, responses_api: bool = False) -> None:
    """Every SSE stream ends this way: an error event if it failed, then ``[DONE]``.

    A Responses API stream has no ``[DONE]`` (its last event says it is complete); a failure
    there is that API's ``error`` event."""
    if responses_api:
        tail = b""
        if failure is not None:
            event = {
                "type": "error",
                "code": failure.code,
                "message": failure.message,
                "param": failure.param,
            }
            tail = b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
    else:
        tail = (failure.sse_event() if failure is not None else b"") + DONE_EVENT
    await body(send, tail, more=False)
