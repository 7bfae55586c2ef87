"""Recent usage per (API key prefix, namespace), per minute, for the dashboard.

The ledger answers "how much per day"; an operator watching the network wants the last
hour. This keeps, in memory, one row of per-minute token counts per (key, namespace) pair:
at most ``MAX_SERIES`` pairs (the rest add up under ``other``) over ``MINUTES`` minutes.
Nothing here is persisted; a restart starts an empty window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MINUTES = 60
MAX_SERIES = 50
_OTHER = ("other", "other")


class UsageWindow:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # (key, namespace) -> {minute: [requests, prompt tokens, completion tokens]}
        self._series: dict[tuple[str, str], dict[int, list[int]]] = {}

    def add(self, key_prefix: str, namespace: str, prompt_tokens: int, completion_tokens: int) -> None:
        minute = int(self._clock() // 60)
        pair = (key_prefix, namespace)
        series = self._series.get(pair)
        if series is None:
            # One slot stays free for `other`, so the window never holds more than MAX_SERIES.
            if len(self._series) >= MAX_SERIES - 1:
                self._prune(minute)
            if len(self._series) >= MAX_SERIES - 1:
                pair = _OTHER
            series = self._series.setdefault(pair, {})
        cell = series.get(minute)
        if cell is None:
            cell = series[minute] = [0, 0, 0]
            for old in [m for m in series if m <= minute - MINUTES]:
                del series[old]
        cell[0] += 1
        cell[1] += prompt_tokens
        cell[2] += completion_tokens

    def _prune(self, minute: int) -> None:
        for pair in [p for p, s in self._series.items() if max(s, default=0) <= minute - MINUTES]:
            del self._series[pair]

    def snapshot(self) -> dict[str, object]:
        """``{"minutes": [epoch minute, ...], "series": [{"key", "namespace", "requests": [...],
        "tokens": [...]}]}``, oldest minute first, one value per minute of the window."""
        now = int(self._clock() // 60)
        minutes = list(range(now - MINUTES + 1, now + 1))
        out = []
        for (key, namespace), series in sorted(self._series.items()):
            cells = [series.get(m, (0, 0, 0)) for m in minutes]
            if not any(c[0] for c in cells):
                continue
            out.append(
                {
                    "key": key,
                    "namespace": namespace,
                    "requests": [c[0] for c in cells],
                    "tokens": [c[1] + c[2] for c in cells],
                }
            )
        return {"minutes": [m * 60 for m in minutes], "series": out}
