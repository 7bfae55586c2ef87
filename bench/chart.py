"""Draw docs/performance.png from a bench summary on stdin. Runs in bench/.venv-litellm, which has
matplotlib (a bench-only dependency; tooti itself does not need it)."""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"direct": "#9e9e9e", "tooti": "#1f77b4", "litellm": "#ff7f0e"}


def main() -> None:
    data = json.load(sys.stdin)
    s = data["summary"]
    f, a = s["figures"], s["added"]
    names = [n for n in ("direct", "tooti", "litellm") if f.get(n)]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    fig.suptitle(
        f"direct vs tooti vs LiteLLM on one fast fake upstream ({data['mode']} run {data['started']})"
    )

    def bars(ax, title, values, who, unit, fmt="{:.1f}", goal=None):
        xs = range(len(who))
        vals = [v if v is not None else 0 for v in values]
        ax.bar(xs, vals, color=[COLORS[n] for n in who])
        ax.set_xticks(list(xs), who)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        for x, v in zip(xs, values, strict=False):
            ax.annotate(
                "–" if v is None else fmt.format(v), (x, v or 0), ha="center", va="bottom", fontsize=9
            )
        if goal is not None:
            ax.axhline(goal, color="green", linestyle="--", linewidth=1)
            ax.annotate(f"goal {goal}", (len(who) - 0.6, goal), color="green", fontsize=8, va="bottom")
        ax.margins(y=0.15)

    proxies = [n for n in names if n != "direct"]
    bars(
        axes[0][0],
        "added latency p50, non-streaming, c=1",
        [a[n].get("latency_p50_ms") for n in proxies],
        proxies,
        "ms",
        "{:.2f}",
        goal=5,
    )
    bars(
        axes[0][1],
        "added TTFT p50, streaming, c=1",
        [a[n].get("ttft_p50_ms") for n in proxies],
        proxies,
        "ms",
        "{:.2f}",
        goal=8,
    )
    bars(
        axes[0][2],
        "added time per chunk (1,000-token stream)",
        [a[n].get("per_chunk_ms") for n in proxies],
        proxies,
        "ms / chunk",
        "{:.3f}",
        goal=0.25,
    )
    bars(
        axes[1][0],
        "requests/s at c=64, non-streaming (log)",
        [f[n].get("rps_c64") for n in names],
        names,
        "req/s",
        "{:.0f}",
    )
    axes[1][0].set_yscale("log")
    ax = axes[1][1]
    levels = ["16", "64", "256"]
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [f[n].get(f"tokens_per_s_{lv}") or 0 for lv in levels]
        ax.bar([j + i * width for j in range(len(levels))], vals, width, label=n, color=COLORS[n])
    ax.set_xticks(
        [j + width * (len(names) - 1) / 2 for j in range(len(levels))], [f"{lv} streams" for lv in levels]
    )
    ax.set_yscale("log")
    ax.set_title("tokens/s, concurrent 200-token streams (log)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1][2]
    cpu = []
    for n in proxies:
        if n == "tooti":
            cpu.append((f[n].get("gateway_cpu_ms_per_req") or 0) + (f[n].get("node_cpu_ms_per_req") or 0))
        else:
            cpu.append(f[n].get("litellm_cpu_ms_per_req"))
    bars(ax, "proxy CPU-ms per request (c=64)", cpu, proxies, "CPU ms", "{:.2f}")
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=90)


if __name__ == "__main__":
    main()
