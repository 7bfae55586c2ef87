"""``tooti status``: the nodes a gateway sees, as a table, once or refreshing (``--watch``).

Everything shown comes from other machines (node names, namespaces, model names, versions,
the gateway's error messages), so each string is stripped of control and escape characters
before it reaches the terminal: a node named ``"\\x1b[2J..."`` cannot clear or retitle it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import httpx

from tooti._sanitize import printable

_HEADER = ("PEER", "NAME", "NAMESPACE", "MODELS", "LOAD", "TTFT ms", "TOK/s", "RTT ms", "LAST HB", "STATE")
# Terminal control for --watch on a TTY: cursor home, clear screen.
_CLEAR = "\x1b[H\x1b[2J"


class StatusError(Exception):
    """The gateway could not be asked, or said no; ``code`` is the exit status to use."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def fetch(gateway: str, api_key: str | None) -> dict[str, Any]:
    """GET ``/v1/network/nodes``; raises :class:`StatusError` (2: unreachable, 1: refused)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(gateway.rstrip("/") + "/v1/network/nodes", headers=headers, timeout=5, trust_env=False)
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach {gateway}: {type(exc).__name__}", 2) from None
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:200]
        raise StatusError(f"{gateway}: HTTP {r.status_code}: {printable(str(msg), 200)}", 1)
    try:
        doc = r.json()
    except ValueError:
        raise StatusError(f"{gateway}: the answer is not JSON", 1) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data", []), list):
        raise StatusError(f"{gateway}: unexpected answer", 1)
    return doc


def _num(value: Any, fmt: str) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    try:
        return format(value, fmt)
    except ValueError:  # e.g. a float where an integer was expected
        return format(value, "g")


def _row(n: dict[str, Any]) -> tuple[str, ...]:
    state = "live" if n.get("live") else "silent"
    if not n.get("healthy"):
        state += ",backend-down"
    models = [printable(str(m), 60) for m in (n.get("models") or [])][:8]
    more = len(n.get("models") or []) - len(models)
    return (
        printable(str(n.get("peer_id", "")), 64)[-12:],
        printable(str(n.get("name", "")), 40),
        printable(str(n.get("namespace") or "-"), 40),
        ",".join(models) + (f",+{more}" if more > 0 else ""),
        f"{_num(n.get('in_flight'), 'd')}/{_num(n.get('capacity'), 'd')}",
        _num(n.get("ttft_ms"), ".0f"),
        _num(n.get("tokens_per_s"), ".0f"),
        _num(n.get("rtt_ms"), ".1f"),
        f"{_num(n.get('last_heartbeat_s'), '.1f')}s ago",
        state,
    )


def render(doc: dict[str, Any]) -> str:
    """The status table for a ``/v1/network/nodes`` document, terminal-safe."""
    rows = [_HEADER, *(_row(n) for n in doc.get("data", []) if isinstance(n, dict))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = [f"gateway {printable(str(doc.get('gateway', '?')), 64)}: {len(rows) - 1} node(s)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def show_status(
    gateway: str,
    *,
    api_key: str | None,
    as_json: bool,
    watch: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Print the status once (exit 0, 1 refused, 2 unreachable), or every ``watch`` seconds
    until Ctrl-C (exit 0). With ``as_json`` the gateway's document is printed as is (one per
    line when watching)."""
    out = sys.stdout if out is None else out
    if watch is None:
        try:
            doc = fetch(gateway, api_key)
        except StatusError as exc:
            print(exc, file=sys.stderr)
            return exc.code
        print(json.dumps(doc, indent=2) if as_json else render(doc), file=out)
        return 0
    interval = max(0.2, watch)  # a typo like 0 must not hammer the gateway
    clear = out.isatty() and not as_json
    try:
        while True:
            try:
                doc = fetch(gateway, api_key)
                text = json.dumps(doc) if as_json else render(doc)
            except StatusError as exc:
                text = json.dumps({"error": str(exc)}) if as_json else f"{exc} (retrying)"
            stamp = "" if as_json else f"\n{time.strftime('%H:%M:%S')}  every {interval:g}s, Ctrl-C to stop"
            print((_CLEAR if clear else "") + text + stamp, file=out, flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        if not as_json:
            print(file=out)
        return 0
