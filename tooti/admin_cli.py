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
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from .p2p import keys
from .store import (
    AlreadyExists,
    Namespace,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from .store._namespaces import fingerprint
from .store.usage import safe_text

__all__ = ["main", "register"]

DEFAULT_DATABASE_URL = "sqlite:///tooti.db"
_ONCE = "This secret is shown only once and cannot be recovered; store it now."
_ONCE_KEY = (
    "This private key is shown only once and is not stored anywhere; give it to the"
    " namespace's nodes (node.namespace_secret) now."
)
_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _database_url(args: argparse.Namespace) -> str:
    return args.database_url or os.environ.get("TOOTI_DATABASE_URL") or DEFAULT_DATABASE_URL


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _with_store(args: argparse.Namespace, body: Callable[[Store], Awaitable[int]]) -> int:
    """Open the store, run ``body``, close; map store errors to exit codes."""

    async def run() -> int:
        store = await open_store(_database_url(args))
        try:
            return await body(store)
        finally:
            await store.aclose()

    try:
        return trio.run(run)
    except StoreUnavailable as exc:
        _note(f"error: database unavailable: {exc}")
        return 3
    except (NotFound, AlreadyExists) as exc:
        _note(f"error: {exc}")
        return 1
    except (ValueError, TypeError) as exc:
        _note(f"error: {exc}")
        return 2
    except StoreError as exc:
        _note(f"error: {exc}")
        return 3


def _fmt_time(dt: datetime | None) -> str:
    return "-" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%SZ")


def _cell(value: object) -> str:
    # Stored text may come from clients and nodes: never let it drive the terminal.
    return safe_text(value, 200)[0]


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
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


def _parse_day(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r} (use YYYY-MM-DD)") from None


# -- namespace ----------------------------------------------------------------


def _write_key_file(path: str, private_text: str) -> None:
    """Write a private key to a new file readable by its owner only (never overwrite)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_text + "\n")


def _new_key(args: argparse.Namespace) -> tuple[str, str | None]:
    """(public key to register, private key to print or None).

    The pair is made here, in the command, so the store only ever receives the public half;
    with ``--key-file`` the private half goes to that file (0600) before anything is stored.
    """
    if args.public_key is not None:
        if args.key_file:
            raise ValueError("--public-key and --key-file exclude each other")
        return keys.check_public(args.public_key, keys.NAMESPACE_PUBLIC), None
    private = keys.generate(keys.NAMESPACE_PRIVATE)
    public = keys.public_of(private, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
    if args.key_file:
        try:
            _write_key_file(args.key_file, private)
        except FileExistsError:
            raise ValueError(f"{args.key_file} exists; refusing to overwrite a key file") from None
        except OSError as exc:
            raise ValueError(f"cannot write {args.key_file}: {exc.strerror}") from None
        return public, None
    return public, private


def _hand_out(args: argparse.Namespace, private: str | None, public: str) -> None:
    _note(f"key fingerprint: {fingerprint(public)}")
    if private is not None:
        _note(_ONCE_KEY)
        print(private)
    elif args.key_file:
        _note(f"private key written to {args.key_file} (mode 0600); give it to the namespace's nodes")


def _discard_key_file(args: argparse.Namespace) -> None:
    if args.key_file and args.public_key is None:
        try:
            os.unlink(args.key_file)
        except OSError:
            pass


def _cmd_namespace_create(args: argparse.Namespace) -> int:
    try:
        public, private = _new_key(args)
    except ValueError as exc:
        _note(f"error: {exc}")
        return 2

    async def body(store: Store) -> int:
        ns, _ = await store.create_namespace(
            args.name, owner=args.owner, public_key=public, allowed_peers=args.allow_peer
        )
        _note(f"created namespace {ns.name!r}")
        _hand_out(args, private, public)
        return 0

    code = _with_store(args, body)
    if code != 0:
        _discard_key_file(args)
    return code


def _fmt_keys(ns: Namespace) -> str:
    if not ns.keys:
        return "none (rotate to add one)"
    return ",".join(
        k.fingerprint + ("" if k.expires_at is None else f" (until {_fmt_time(k.expires_at)})")
        for k in ns.keys
    )


def _cmd_namespace_list(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        rows = [
            (
                ns.name,
                ns.owner or "-",
                _fmt_keys(ns),
                ",".join(ns.allowed_peer_ids) or "-",
                _fmt_time(ns.created_at),
                _fmt_time(ns.rotated_at),
            )
            for ns in await store.list_namespaces()
        ]
        _print_table(("NAME", "OWNER", "KEYS", "ALLOWED PEERS", "CREATED", "ROTATED"), rows)
        return 0

    return _with_store(args, body)


def _cmd_namespace_rotate(args: argparse.Namespace) -> int:
    try:
        public, private = _new_key(args)
    except ValueError as exc:
        _note(f"error: {exc}")
        return 2

    async def body(store: Store) -> int:
        await store.rotate_namespace_key(args.name, public_key=public, grace=args.grace)
        if args.grace:
            _note(f"rotated the key of namespace {args.name!r}; old keys stay valid for {args.grace:g}s")
        else:
            _note(f"rotated the key of namespace {args.name!r}; old keys no longer work")
        _hand_out(args, private, public)
        return 0

    code = _with_store(args, body)
    if code != 0:
        _discard_key_file(args)
    return code


def _cmd_namespace_delete(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        if not await store.delete_namespace(args.name):
            _note(f"error: no namespace named {args.name!r}")
            return 1
        _note(f"deleted namespace {args.name!r}")
        return 0

    return _with_store(args, body)


def _grace(text: str) -> float:
    """Seconds ("300") or a duration ("10m", "2h")."""
    if text.strip().isdigit():
        return float(text)
    return parse_duration(text).total_seconds()


# -- apikey -------------------------------------------------------------------


def _cmd_apikey_create(args: argparse.Namespace) -> int:
    expires = None
    if args.expires_in is not None:
        expires = datetime.now(UTC) + args.expires_in

    async def body(store: Store) -> int:
        key, plaintext = await store.create_api_key(
            owner=args.owner, namespaces=args.namespace, models=args.model, expires_at=expires
        )
        _note(f"created API key {key.prefix} (expires: {_fmt_time(key.expires_at)})")
        _note(_ONCE)
        print(plaintext)
        return 0

    return _with_store(args, body)


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
                    _fmt_time(key.created_at),
                    _fmt_time(key.expires_at),
                )
            )
        headers = ("PREFIX", "OWNER", "NAMESPACES", "MODELS", "STATUS", "CREATED", "EXPIRES")
        _print_table(headers, rows)
        return 0

    return _with_store(args, body)


def _cmd_apikey_revoke(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        if not await store.revoke_api_key(args.prefix):
            _note(f"error: no active API key with prefix {args.prefix!r}")
            return 1
        _note(f"revoked API key {args.prefix}")
        return 0

    return _with_store(args, body)


# -- db / usage ---------------------------------------------------------------


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    async def run() -> list[int]:
        store = await open_store(_database_url(args), migrate=False)
        try:
            return await store.migrate()
        finally:
            await store.aclose()

    try:
        applied = trio.run(run)
    except StoreUnavailable as exc:
        _note(f"error: database unavailable: {exc}")
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
        _print_table(("DAY", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "FLAGGED"), rows)
        return 0

    return _with_store(args, body)


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

    ns = group("namespace", "manage namespaces and their keys")

    def key_options(p: Any) -> None:
        p.add_argument(
            "--public-key",
            default=None,
            metavar="TEXT",
            help="register this public key (tooti-ns-pub-v1:...) instead of generating a pair",
        )
        p.add_argument(
            "--key-file",
            default=None,
            metavar="PATH",
            help="write the generated private key to this new file (mode 0600) instead of stdout",
        )

    p = leaf(ns, "create", _cmd_namespace_create, "create a namespace (prints its private key once)")
    p.add_argument("name")
    p.add_argument("--owner", default="")
    key_options(p)
    p.add_argument(
        "--allow-peer",
        action="append",
        default=[],
        metavar="PEER",
        help="peer id admitted without a key proof (repeatable)",
    )
    leaf(ns, "list", _cmd_namespace_list, "list namespaces and key fingerprints (never private keys)")
    p = leaf(ns, "rotate", _cmd_namespace_rotate, "give a namespace a new key (prints it once)")
    p.add_argument("name")
    key_options(p)
    p.add_argument(
        "--grace",
        type=_grace,
        default=0.0,
        metavar="SECONDS",
        help="keep the old keys valid this long (seconds, or e.g. 10m); default 0: revoked at once",
    )
    leaf(ns, "delete", _cmd_namespace_delete, "delete a namespace").add_argument("name")

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
    p.add_argument("--since", type=_parse_day, default=None, metavar="YYYY-MM-DD")
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
