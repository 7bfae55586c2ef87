"""Administrative sub-commands: namespaces, API keys, migrations, usage.

``register(subparsers)`` adds them to the main ``tooti`` parser; each leaf
sets ``func`` to a ``_cmd_*(args) -> int`` function.  ``main(argv)`` (and
``python -m tooti.admin_cli``) runs a parser with only these commands.

Secrets are printed exactly once, on stdout and alone on their line (so
scripts can capture them); notes and warnings go to stderr.
Exit codes: 0 success, 1 not found / already exists, 2 bad input,
3 database unavailable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import trio

from . import admin_namespace
from ._admin_common import (
    DEFAULT_DATABASE_URL,
    database_url,
    fmt_time,
    note,
    parse_day,
    parse_duration,
    print_table,
    with_store,
)
from .store import Store, StoreUnavailable, open_store

__all__ = ["DEFAULT_DATABASE_URL", "main", "parse_duration", "register"]

_ONCE = "This secret is shown only once and cannot be recovered; store it now."


# -- apikey -------------------------------------------------------------------


def _cmd_apikey_create(args: argparse.Namespace) -> int:
    expires = None
    if args.expires_in is not None:
        expires = datetime.now(UTC) + args.expires_in

    async def body(store: Store) -> int:
        key, plaintext = await store.create_api_key(
            owner=args.owner, namespaces=args.namespace, models=args.model, expires_at=expires
        )
        note(f"created API key {key.prefix} (expires: {fmt_time(key.expires_at)})")
        note(_ONCE)
        print(plaintext)
        return 0

    return with_store(args, body)


def _cmd_apikey_list(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        rows = []
        for key in await store.list_api_keys():
            status = "revoked" if key.is_revoked() else "expired" if key.is_expired() else "active"
            rows.append(
                (
                    key.prefix,
                    key.owner or "-",
                    ",".join(key.namespaces) or "*",
                    ",".join(key.models) or "*",
                    status,
                    fmt_time(key.created_at),
                    fmt_time(key.expires_at),
                )
            )
        headers = ("PREFIX", "OWNER", "NAMESPACES", "MODELS", "STATUS", "CREATED", "EXPIRES")
        print_table(headers, rows)
        return 0

    return with_store(args, body)


def _cmd_apikey_revoke(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        if not await store.revoke_api_key(args.prefix):
            note(f"error: no active API key with prefix {args.prefix!r}")
            return 1
        note(f"revoked API key {args.prefix}")
        return 0

    return with_store(args, body)


# -- db / usage ---------------------------------------------------------------


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    async def run() -> list[int]:
        store = await open_store(database_url(args), migrate=False)
        try:
            return await store.migrate()
        finally:
            await store.aclose()

    try:
        applied = trio.run(run)
    except StoreUnavailable as exc:
        note(f"error: database unavailable: {exc}")
        return 3
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema up to date")
    return 0


def _cmd_usage(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        summary = await store.usage_summary(key_prefix=args.key, since=args.since)
        if args.json:
            out = [
                {
                    "key_prefix": s.key_prefix,
                    "day": s.day.isoformat(),
                    "model": s.model,
                    "requests": s.requests,
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens,
                    "total_tokens": s.prompt_tokens + s.completion_tokens,
                    "flagged_requests": s.flagged_requests,
                }
                for s in summary
            ]
            print(json.dumps(out, indent=2))
            return 0
        rows = [
            (
                s.day.isoformat(),
                s.key_prefix,
                s.model,
                s.requests,
                s.prompt_tokens,
                s.completion_tokens,
                s.flagged_requests,
            )
            for s in summary
        ]
        print_table(("DAY", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "FLAGGED"), rows)
        return 0

    return with_store(args, body)


# -- wiring -------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the namespace, apikey, db and usage commands to ``subparsers``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=None,
        help=f"database URL (default: $TOOTI_DATABASE_URL or {DEFAULT_DATABASE_URL})",
    )

    def leaf(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        parser = parent.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(func=func)
        return parser

    def group(name: str, help: str) -> Any:
        parser = subparsers.add_parser(name, help=help, description=help)
        sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        return sub

    admin_namespace.register(group("namespace", "manage namespaces and their keys"), leaf)

    apikeys = group("apikey", "manage gateway API keys")
    p = leaf(apikeys, "create", _cmd_apikey_create, "create an API key (prints it once)")
    p.add_argument("--owner", default="")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="N",
        help="restrict to this namespace (repeatable; default: all)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="M",
        help="restrict to this model (repeatable; default: all)",
    )
    p.add_argument(
        "--expires-in",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="lifetime such as 30d, 12h, 90m (default: never expires)",
    )
    leaf(apikeys, "list", _cmd_apikey_list, "list API keys (prefixes only)")
    leaf(apikeys, "revoke", _cmd_apikey_revoke, "revoke an API key").add_argument("prefix")

    db = group("db", "database maintenance")
    leaf(db, "migrate", _cmd_db_migrate, "apply pending schema migrations")

    p = leaf(subparsers, "usage", _cmd_usage, "show usage per key, day and model")
    p.add_argument("--key", default=None, metavar="PREFIX", help="only this API key prefix")
    p.add_argument("--since", type=parse_day, default=None, metavar="YYYY-MM-DD")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: list[str] | None = None) -> int:
    """Run one admin command from ``argv``; return the exit code."""
    # The pool logs every failed connection attempt; the command reports the
    # outcome itself, so keep a standalone run's stderr to that one line.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(prog="tooti", description="tooti administration")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
