"""OpenAI-shaped errors: one exception, so every failure a client sees has the same shape.

Raised anywhere in request handling (dispatch, admission, the HTTP layer) and turned into a
response in one place (``http.responses``).
"""

from __future__ import annotations

from typing import Any

from tooti.openai_shapes import error_dict, error_type, sse_error_event


class HTTPError(Exception):
    """An error the client gets as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.type = type_ or error_type(status)

    def body(self) -> dict[str, Any]:
        return error_dict(self.status, self.message, code=self.code, param=self.param, type_=self.type)

    def sse_event(self) -> bytes:
        return sse_error_event(self.status, self.message, self.code, param=self.param)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return error_dict(status, message, code=code, param=param)


__all__ = ["HTTPError", "error_body", "sse_error_event"]
