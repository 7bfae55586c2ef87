"""What the client sees of a node's answer: the gateway chooses, the node only proposes.

A node (or the backend behind it) could send any status and any error body; the client
always gets a status the API uses and an OpenAI error document built here from validated
fields, never the node's bytes verbatim.
"""

from __future__ import annotations

import json

from tooti.wire import pb

from .errors import HTTPError

_MESSAGE_MAX = 2000
_FIELD_MAX = 200
# A backend refusing its own node's credentials, or timing out, is the node's problem, not
# the client's: the client sees a gateway-side failure for those.
_NODE_SIDE = {401: 502, 403: 502, 407: 502, 408: 504}
_SERVER = {500, 501, 502, 503, 504}


def client_status(status: int) -> int:
    """The status the client gets for a node's ``status``: 2xx -> 200, client errors kept
    (but the node-side ones above), 5xx kept when standard, anything else (1xx, 3xx, out of
    range) -> 502."""
    if 200 <= status <= 299:
        return 200
    if 400 <= status <= 499:
        return _NODE_SIDE.get(status, status)
    if status in _SERVER:
        return status
    return 502


def error_from_answer(head: pb.ResponseHead, body: bytes, error: pb.Error | None) -> HTTPError:
    """The client's error for a refused request: the node's own error frame, or the backend's
    error document (message, type, param and code kept when they have the right types)."""
    if error is not None:
        status = client_status(error.status or head.status)
        return HTTPError(
            status, _clip(error.message, _MESSAGE_MAX) or "the node failed", code=error.code or None
        )
    status = client_status(head.status)
    message, type_, param, code = f"the backend answered HTTP {head.status}", None, None, None
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        if isinstance(err.get("message"), str) and err["message"]:
            message = err["message"]
        type_ = _text(err.get("type"))
        param = _text(err.get("param"))
        code = _text(err.get("code"))
    elif isinstance(err, str) and err:
        message = err
    elif isinstance(doc, dict) and isinstance(doc.get("detail"), str):  # FastAPI-style servers
        message = doc["detail"]
    if status != head.status:
        type_ = None  # the backend's type described its status, not ours
    return HTTPError(status, _clip(message, _MESSAGE_MAX), code=code, param=param, type_=type_)


def _text(value: object) -> str | None:
    return _clip(value, _FIELD_MAX) if isinstance(value, str) and value else None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
