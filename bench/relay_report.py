"""The relay-capacity table in docs/performance.md, from ``bench/relay_capacity.py`` results.

python -m bench.relay_capacity --doc before=bench/results/relay-before.json after=bench/results/relay-after.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: "Delivered" at or above this counts as carrying the offered load.
KNEE = 0.97


def knees(loads: list[dict[str, Any]], name: str) -> tuple[float, float]:
    """(the highest offered rate delivered at >= KNEE, the highest rate below which *every*
    offered rate was delivered at >= KNEE)."""
    rates = sorted((r[name]["offered_tok_s"], r[name]["delivered"]) for r in loads)
    knee = max((rate for rate, d in rates if d >= KNEE), default=0.0)
    sustained = 0.0
    for rate, d in rates:
        if d < KNEE:
            break
        sustained = rate
    return knee, sustained


def _cell(r: dict[str, Any], roles: tuple[str, ...]) -> list[str]:
    cpu = " / ".join(f"{r.get(f'cpu_ms_per_token_{role}', float('nan')):.3f}" for role in roles)
    other = r.get("cores_other")
    return [
        f"{r['delivered']:.2f}",
        str(r["stalled"]),
        str(r["errors"]),
        cpu,
        "n/a" if other is None else f"{other:.2f}",
    ]


def markdown(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """The doc's table: one row per load, for direct and for each labelled tooti run."""
    head = [
        "offered (streams × tok/s)",
        "target",
        "delivered",
        "stalled",
        "errors",
        "CPU-ms/token",
        "other cores",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = runs[0][1]
    for i, row in enumerate(first["loads"]):
        load = f"{row['load'].replace('x', ' × ')} = {row['direct']['offered_tok_s']:,.0f}/s"
        for label, run in runs:
            d, r = run["loads"][i]["direct"], run["loads"][i]["tooti"]
            lines.append("| " + " | ".join([load, f"direct, {label} run", *_cell(d, ("upstream",))]) + " |")
            cells = ["", f"**tooti, {label}** (gw / node)", *_cell(r, ("gateway", "node"))]
            lines.append("| " + " | ".join(cells) + " |")
            load = ""
    lines.append("")
    for label, run in runs:
        knee, sustained = knees(run["loads"], "tooti")
        light = run["light"]
        added = {k: light["tooti"][k] - light["direct"][k] for k in ("latency_p50_ms", "ttft_p50_ms")}
        lines.append(
            f"- {label}: knee (highest offered rate delivered ≥ {KNEE}) **{knee:,.0f} tok/s**, every rate "
            f"up to **{sustained:,.0f} tok/s** delivered ≥ {KNEE} (direct {run['knee_direct_tok_s']:,.0f}); "
            f"one request at a time: added latency p50 "
            f"{added['latency_p50_ms']:.2f} ms, added TTFT p50 {added['ttft_p50_ms']:.2f} ms, token lateness "
            f"p50 / max {light['tooti']['token_lateness_p50_ms']:.2f} / {light['tooti']['token_lateness_max_ms']:.2f} ms "
            f"(direct {light['direct']['token_lateness_p50_ms']:.2f} / {light['direct']['token_lateness_max_ms']:.2f}); "
            f"other processes used {run.get('other_cores', 'n/a')} of the 2 cores on average."
        )
    return "\n".join(lines) + "\n"


def write_doc(runs: list[tuple[str, dict[str, Any]]], doc: Path, *, block_name: str = "relay") -> None:
    """Replace the block between ``<!-- {block_name}:begin ... -->`` and ``<!-- {block_name}:end -->``
    in ``doc`` with the table of ``runs`` (appended when the doc has no such block)."""
    text = doc.read_text()
    begin = f"<!-- {block_name}:begin (bench/relay_capacity.py --doc) -->"
    end = f"<!-- {block_name}:end -->"
    block = f"{begin}\n{markdown(runs)}{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text += "\n" + block + "\n"
    doc.write_text(text)
