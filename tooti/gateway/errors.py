"""OpenAI-shaped errors: one constructor, so every failure a client sees has the same shape."""

from __future__ import annotations

import json

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


class HTTPError(Exception):
    """Raised anywhere in request handling; the app turns it into an OpenAI error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        #: an OpenAI error document from a backend, passed through as-is when set
        self.raw_body: bytes | None = None

    def body(self) -> dict[str, object]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def sse_error_event(status: int, message: str, code: str | None) -> bytes:
    """The event that ends a stream which failed after its first byte (OpenAI streams errors
    as a data event carrying an ``error`` object)."""
    return b"data: " + json.dumps(error_body(status, message, code=code)).encode() + b"\n\n"
