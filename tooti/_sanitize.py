"""Making peer-provided strings safe to print on a terminal or to use as a metric label."""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls, DEL; ESC among them, which starts terminal escape sequences.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, limit: int = 200) -> str:
    """``text`` without control, format (bidi overrides, zero-width) or unassigned characters,
    cut to ``limit`` characters (with an ellipsis when cut)."""
    cleaned = _CONTROL.sub("", text)
    if not cleaned.isascii():
        cleaned = "".join(ch for ch in cleaned if unicodedata.category(ch) not in ("Cf", "Cn", "Co", "Cs"))
    if len(cleaned) > limit:
        cleaned = cleaned[: max(0, limit - 1)] + "…"
    return cleaned
