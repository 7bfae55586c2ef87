"""The request being served, as context: its id and the client's W3C ``traceparent``.

The node binds it once per exchange (each exchange runs in its own trio task, and trio gives
every task its own copy of the context), so log lines and backend requests made while serving
it can carry the id without passing it through every call.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TraceContext:
    request_id: str
    traceparent: str = ""


_current: ContextVar[TraceContext | None] = ContextVar("tooti_trace", default=None)

# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def valid_traceparent(value: str | None) -> str:
    """``value`` if it is a well-formed ``traceparent`` header (version 00..fe), else ``""``."""
    if value and len(value) == 55 and _TRACEPARENT.match(value) and not value.startswith("ff"):
        return value
    return ""


def bind(request_id: str, traceparent: str = "") -> None:
    """Make this the current request for the calling task (and tasks it starts later).

    Both values came over the network: anything malformed is dropped, not passed on.
    """
    rid = request_id if _REQUEST_ID.match(request_id or "") else ""
    _current.set(TraceContext(rid, valid_traceparent(traceparent)) if rid else None)


def current() -> TraceContext | None:
    return _current.get()


def headers() -> dict[str, str]:
    """Headers that carry the current request to a backend: ``X-Request-ID``, ``traceparent``."""
    ctx = _current.get()
    if ctx is None:
        return {}
    out = {"X-Request-ID": ctx.request_id}
    if ctx.traceparent:
        out["traceparent"] = ctx.traceparent
    return out
