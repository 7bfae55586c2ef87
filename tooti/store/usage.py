"""Normalising usage rows before they are stored: nothing a client or a node sends can jam the
ledger or overflow a sum.

Every text field loses NUL, other control characters and lone surrogates (PostgreSQL refuses
NUL in TEXT; neither engine can encode a lone surrogate) and is cut to a bound; every integer is
forced into a range.  A row is changed only to make it storable, and every change is recorded in
its ``flags``, so a clamped figure is never mistaken for a measured one:

* ``usage_clamped``: a token count was negative, above :data:`MAX_TOKENS`, or not an integer;
* ``text_normalised``: a text field was cut or had characters removed;
* ``value_invalid``: latency, status, time or usage source had to be replaced;
* ``request_id_generated``: the row came without the gateway's request id.

:data:`MAX_TOKENS` (10^9 per figure per request) keeps any realistic sum far below 2^63: a
billion rows at the bound still sum to 10^18.
"""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from collections.abc import Iterable
from datetime import datetime

from ._base import USAGE_SOURCES, UsageRow, as_utc, utcnow

__all__ = ["MAX_LATENCY_MS", "MAX_TOKENS", "normalise", "safe_text", "split_flags"]

#: Upper bound of one token figure (prompt or completion) of one request.
MAX_TOKENS = 10**9
#: Upper bound of a recorded latency (about 11.6 days).
MAX_LATENCY_MS = 10**9

# Bounds per text field: generous for real values, small enough that a hostile one is cheap.
_LIMITS = {
    "request_id": 128,
    "client_request_id": 128,
    "key_prefix": 64,
    "namespace": 64,
    "node_peer_id": 128,
    "model": 256,
    "gateway_id": 128,
}
_MAX_FLAGS = 16
_FLAG_LEN = 48
_SYSTEM_FLAGS = frozenset({"usage_clamped", "text_normalised", "value_invalid", "request_id_generated"})
# C0 and C1 controls, DEL, and UTF-16 surrogates (only reachable as lone surrogates in str).
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FLAG_BAD = re.compile("[^a-z0-9_]")


def safe_text(value: object, limit: int) -> tuple[str, bool]:
    """``value`` as storable, printable text of at most ``limit`` characters, and whether it
    had to be changed.  Non-strings become their ``str``."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    clean = _BAD_CHARS.sub("", text)[:limit]
    return clean, clean != text


def split_flags(flags: object, *, limit: int = _MAX_FLAGS) -> list[str]:
    """Flags as a list: from a comma-separated string or an iterable of strings, normalised to
    ``[a-z0-9_]`` identifiers, deduplicated, bounded in number and length."""
    if isinstance(flags, str):
        items: Iterable[object] = flags.split(",")
    elif isinstance(flags, Iterable):
        items = flags
    else:
        items = ()
    out: list[str] = []
    for item in items:
        flag = _FLAG_BAD.sub("_", str(item).strip().lower())[:_FLAG_LEN].strip("_")
        if flag and flag not in out and len(out) < limit:
            out.append(flag)
    return out


def _bounded(value: object, high: int) -> tuple[int, bool]:
    """``value`` as an int in [0, high], and whether it had to be changed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = int(str(value).strip())
        except (TypeError, ValueError):
            return 0, True
    if isinstance(value, float):
        if not math.isfinite(value):
            return (high if value > 0 else 0), True
        if value != int(value):
            return min(max(int(value), 0), high), True
        value = int(value)
    if value < 0:
        return 0, True
    if value > high:
        return high, True
    return value, False


def normalise(row: UsageRow) -> UsageRow:
    """``row`` made storable on every engine, with flags saying what had to change.

    Idempotent: normalising a normalised row returns an equal row.
    """
    given = split_flags(row.flags, limit=_MAX_FLAGS + len(_SYSTEM_FLAGS))
    system = {f for f in given if f in _SYSTEM_FLAGS}
    flags = [f for f in given if f not in _SYSTEM_FLAGS][:_MAX_FLAGS]
    fixes: dict[str, object] = {}
    edited = False
    for name, limit in _LIMITS.items():
        text, changed = safe_text(getattr(row, name), limit)
        fixes[name] = text
        edited |= changed
    if not fixes["request_id"]:
        fixes["request_id"] = f"gen_{uuid.uuid4().hex}"
        system.add("request_id_generated")
    clamped = False
    for name in ("prompt_tokens", "completion_tokens"):
        fixes[name], changed = _bounded(getattr(row, name), MAX_TOKENS)
        clamped |= changed
    invalid = False
    fixes["latency_ms"], changed = _bounded(row.latency_ms, MAX_LATENCY_MS)
    invalid |= changed
    status, changed = _bounded(row.status, 999)
    if changed or not 100 <= status <= 599:
        status, invalid = 0, True
    fixes["status"] = status
    at = row.at
    if not isinstance(at, datetime):
        at, invalid = utcnow(), True
    fixes["at"] = as_utc(at)
    source = row.usage_source if row.usage_source in USAGE_SOURCES else None
    if source is None:
        source, invalid = "estimated", True
    fixes["usage_source"] = source
    for flag, raised in (("usage_clamped", clamped), ("text_normalised", edited), ("value_invalid", invalid)):
        if raised:
            system.add(flag)
    fixes["flags"] = ",".join(sorted({*flags, *system}))
    return dataclasses.replace(row, **fixes)  # type: ignore[arg-type]  # fields typed per name above
