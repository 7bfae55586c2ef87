"""``tooti status``: the nodes a gateway sees, as a table."""

from __future__ import annotations

import json
import sys

import httpx


def show_status(gateway: str, *, api_key: str | None, as_json: bool) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(gateway.rstrip("/") + "/v1/network/nodes", headers=headers, timeout=5, trust_env=False)
    except httpx.HTTPError as exc:
        print(f"cannot reach {gateway}: {type(exc).__name__}", file=sys.stderr)
        return 2
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:200]
        print(f"{gateway}: HTTP {r.status_code}: {msg}", file=sys.stderr)
        return 1
    doc = r.json()
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [
        ("PEER", "NAME", "NAMESPACE", "MODELS", "LOAD", "TTFT ms", "TOK/s", "RTT ms", "LAST HB", "STATE")
    ]
    for n in doc.get("data", []):
        state = "live" if n.get("live") else "silent"
        if not n.get("healthy"):
            state += ",backend-down"
        rows.append(
            (
                n["peer_id"][-12:],
                n.get("name", ""),
                n.get("namespace") or "-",
                ",".join(n.get("models", [])),
                f"{n.get('in_flight', 0)}/{n.get('capacity', 0)}",
                f"{n.get('ttft_ms', 0):.0f}",
                f"{n.get('tokens_per_s', 0):.0f}",
                "-" if n.get("rtt_ms") is None else f"{n['rtt_ms']:.1f}",
                f"{n.get('last_heartbeat_s', 0):.1f}s ago",
                state,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print(f"gateway {doc.get('gateway', '?')}: {len(rows) - 1} node(s)")
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return 0
