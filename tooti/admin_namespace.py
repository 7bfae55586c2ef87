"""``tooti namespace ...``: namespaces and their keys.

A namespace's credential is an Ed25519 key pair.  The pair is generated *in the command*, so
the store only ever receives the public half; the private half is printed once on stdout (alone
on its line, for scripts) or written to ``--key-file`` (created 0600, never overwritten).  With
``--public-key`` an operator registers a key made elsewhere and no private key ever touches the
gateway host.  Listings show key fingerprints, never keys.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ._admin_common import fmt_time, note, parse_duration, print_table, with_store
from .p2p import keys
from .store import Namespace, Store
from .store._namespaces import fingerprint

__all__ = ["register"]

_ONCE_KEY = (
    "This private key is shown only once and is not stored anywhere; give it to the"
    " namespace's nodes (node.namespace_key) now."
)


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
    note(f"key fingerprint: {fingerprint(public)}")
    if private is not None:
        note(_ONCE_KEY)
        print(private)
    elif args.key_file:
        note(f"private key written to {args.key_file} (mode 0600); give it to the namespace's nodes")


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
        note(f"error: {exc}")
        return 2

    async def body(store: Store) -> int:
        ns, _ = await store.create_namespace(
            args.name, owner=args.owner, public_key=public, allowed_peers=args.allow_peer
        )
        note(f"created namespace {ns.name!r}")
        _hand_out(args, private, public)
        return 0

    code = with_store(args, body)
    if code != 0:
        _discard_key_file(args)
    return code


def _fmt_keys(ns: Namespace) -> str:
    if not ns.keys:
        return "none (rotate to add one)"
    return ",".join(
        k.fingerprint + ("" if k.expires_at is None else f" (until {fmt_time(k.expires_at)})")
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
                fmt_time(ns.created_at),
                fmt_time(ns.rotated_at),
            )
            for ns in await store.list_namespaces()
        ]
        print_table(("NAME", "OWNER", "KEYS", "ALLOWED PEERS", "CREATED", "ROTATED"), rows)
        return 0

    return with_store(args, body)


def _cmd_namespace_rotate(args: argparse.Namespace) -> int:
    try:
        public, private = _new_key(args)
    except ValueError as exc:
        note(f"error: {exc}")
        return 2

    async def body(store: Store) -> int:
        await store.rotate_namespace_key(args.name, public_key=public, grace=args.grace)
        if args.grace:
            note(f"rotated the key of namespace {args.name!r}; old keys stay valid for {args.grace:g}s")
        else:
            note(f"rotated the key of namespace {args.name!r}; old keys no longer work")
        _hand_out(args, private, public)
        return 0

    code = with_store(args, body)
    if code != 0:
        _discard_key_file(args)
    return code


def _cmd_namespace_delete(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        if not await store.delete_namespace(args.name):
            note(f"error: no namespace named {args.name!r}")
            return 1
        note(f"deleted namespace {args.name!r}")
        return 0

    return with_store(args, body)


def _grace(text: str) -> float:
    """Seconds ("300") or a duration ("10m", "2h")."""
    if text.strip().isdigit():
        return float(text)
    return parse_duration(text).total_seconds()


def register(ns: Any, leaf: Callable[..., Any]) -> None:
    """Add create/list/rotate/delete to the ``namespace`` sub-parser ``ns``; ``leaf`` makes
    one command parser (with the common options) and binds its function."""

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
