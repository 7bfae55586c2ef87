"""OpenAI's wire shapes, defined once for the gateway and the node.

Error documents (``{"error": {"message", "type", "param", "code"}}``), the SSE events a stream
ends with, and the usage object. Both sides import these so a client sees one shape whichever
process produced the error.
"""

from __future__ import annotations

import json
from typing import Any

from tooti.wire import pb

#: the event that ends every OpenAI stream; only the gateway writes it to a client
DONE_EVENT = b"data: [DONE]\n\n"
#: the same event as the backend sends it, without the blank line (for prefix tests)
DONE = b"data: [DONE]"

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    501: "invalid_request_error",
}


def error_type(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status: client errors are ``invalid_request_error``."""
    return _TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")


def error_dict(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type_ or error_type(status),
            "param": param,
            "code": code,
        }
    }


def error_json(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    type_: str | None = None,
) -> bytes:
    return json.dumps(error_dict(status, message, code=code, param=param, type_=type_)).encode()


def sse_error_event(status: int, message: str, code: str | None, *, param: str | None = None) -> bytes:
    """The event that ends a stream which failed after its first byte (OpenAI streams errors
    as a data event carrying an ``error`` object); ``[DONE]`` follows it."""
    return b"data: " + error_json(status, message, code=code, param=param) + b"\n\n"


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# -- routes -------------------------------------------------------------------------------
# The inference routes: HTTP path -> (route name the adapters use, wire route). The gateway
# routes by path; the node maps the wire route back to the name.

ROUTE_BY_PATH: dict[str, tuple[str, int]] = {
    "/v1/chat/completions": ("chat", pb.ROUTE_CHAT),
    "/v1/completions": ("completions", pb.ROUTE_COMPLETIONS),
    "/v1/embeddings": ("embeddings", pb.ROUTE_EMBEDDINGS),
    "/v1/responses": ("responses", pb.ROUTE_RESPONSES),
}
ROUTE_NAMES: dict[int, str] = {wire: name for name, wire in ROUTE_BY_PATH.values()}
PATH_OF_ROUTE: dict[str, str] = {name: path for path, (name, _) in ROUTE_BY_PATH.items()}

# Other OpenAI(-compatible) routes relayed as ROUTE_PASSTHROUGH with method and path, to nodes
# whose backend serves them. JSON bodies with a "model" only (routing needs it).
PASSTHROUGH_PATHS: frozenset[str] = frozenset(
    {
        "/v1/rerank",
        "/v1/reranking",
        "/v1/score",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/audio/speech",
        "/tokenize",
        "/detokenize",
        "/v1/tokenize",
        "/v1/detokenize",
    }
)
