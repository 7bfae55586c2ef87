"""Helpers shared by the administrative commands (``tooti.admin_cli``,
``tooti.admin_namespace``): the database URL, the store around a command, exit codes, tables.

Exit codes: 0 success, 1 not found / already exists, 2 bad input, 3 database unavailable.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from .store import AlreadyExists, NotFound, Store, StoreError, StoreUnavailable, open_store
from .store.usage import safe_text

DEFAULT_DATABASE_URL = "sqlite:///tooti.db"
_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def database_url(args: argparse.Namespace) -> str:
    return args.database_url or os.environ.get("TOOTI_DATABASE_URL") or DEFAULT_DATABASE_URL


def note(message: str) -> None:
    print(message, file=sys.stderr)


def with_store(args: argparse.Namespace, body: Callable[[Store], Awaitable[int]]) -> int:
    """Open the store, run ``body``, close; map store errors to exit codes."""

    async def run() -> int:
        store = await open_store(database_url(args))
        try:
            return await body(store)
        finally:
            await store.aclose()

    try:
        return trio.run(run)
    except StoreUnavailable as exc:
        note(f"error: database unavailable: {exc}")
        return 3
    except (NotFound, AlreadyExists) as exc:
        note(f"error: {exc}")
        return 1
    except (ValueError, TypeError) as exc:
        note(f"error: {exc}")
        return 2
    except StoreError as exc:
        note(f"error: {exc}")
        return 3


def fmt_time(dt: datetime | None) -> str:
    return "-" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%SZ")


def _cell(value: object) -> str:
    # Stored text may come from clients and nodes: never let it drive the terminal.
    return safe_text(value, 200)[0]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(headers)] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def parse_duration(text: str) -> timedelta:
    """Parse "30d", "12h", "90m", "45s" or "2w" into a timedelta."""
    match = _DURATION_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 30d, 12h, 90m)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_day(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r} (use YYYY-MM-DD)") from None
