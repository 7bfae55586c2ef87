"""``tooti network``: the operator's commands for a network's identity and its gateways.

    tooti network init --key-file network.key         # prints the network id
    tooti network id --key-file network.key
    tooti network admit-gateway PEER_ID --key-file network.key [--days 30] [--out gw.cert]
    tooti network revoke-gateway PEER_ID... --key-file network.key --out revocations.txt

The network key never leaves the operator's machine; gateways get a certificate, nodes and
gateways get the network id. A revocation list names every revoked gateway (it replaces the
previous one); install it on the gateways (``network.revocations_file``): they carry it to
every node and gateway, which drop the revoked peers within a second of receiving it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from libp2p.peer.id import ID

from tooti.p2p import keys, membership


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    net = sub.add_parser("network", help="a network's identity and its gateways").add_subparsers(
        dest="action", required=True
    )
    p = net.add_parser("init", help="create the network key (kept by the operator) and print the network id")
    p.add_argument("--key-file", required=True, type=Path)
    p.set_defaults(func=_init)
    p = net.add_parser("id", help="print the network id of a network key")
    p.add_argument("--key-file", required=True, type=Path)
    p.set_defaults(func=_id)
    p = net.add_parser("admit-gateway", help="issue a certificate admitting a gateway's peer id")
    p.add_argument("peer_id")
    p.add_argument("--key-file", required=True, type=Path)
    p.add_argument("--days", type=float, default=30.0, help="validity (default 30 days)")
    p.add_argument("--out", type=Path, help="write the certificate here (default: print it)")
    p.set_defaults(func=_admit)
    p = net.add_parser("revoke-gateway", help="sign a revocation list naming these gateways")
    p.add_argument("peer_ids", nargs="+")
    p.add_argument("--key-file", required=True, type=Path)
    p.add_argument("--out", type=Path, help="write the list here (default: print it)")
    p.set_defaults(func=_revoke)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file readable by its owner only; refuse to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _read_key(path: Path) -> str:
    text = path.read_text().strip()
    keys.public_of(text, keys.NETWORK_PRIVATE, keys.NETWORK_PUBLIC)  # right kind, or KeyFormatError
    return text


def _peer(text: str) -> ID:
    try:
        return ID.from_base58(text)
    except Exception:  # noqa: BLE001 - base58 decoding raises assorted types
        raise SystemExit(f"not a peer id: {text!r}") from None


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)


def _init(args: argparse.Namespace) -> int:
    if args.key_file.exists():
        print(f"{args.key_file} exists; refusing to overwrite a network key", file=sys.stderr)
        return 1
    key = keys.generate(keys.NETWORK_PRIVATE)
    write_private(args.key_file, key)
    print(membership.network_id(key))
    print(
        f"network key written to {args.key_file} (mode 0600): keep it off gateways and nodes", file=sys.stderr
    )
    return 0


def _id(args: argparse.Namespace) -> int:
    print(membership.network_id(_read_key(args.key_file)))
    return 0


def _admit(args: argparse.Namespace) -> int:
    cert = membership.issue(_read_key(args.key_file), _peer(args.peer_id), valid_for_s=args.days * 86400)
    _emit(membership.to_text(cert), args.out)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    signed = membership.revoke(_read_key(args.key_file), [_peer(p) for p in args.peer_ids])
    _emit(membership.to_text(signed), args.out)
    return 0
