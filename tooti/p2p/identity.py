"""Persistent Ed25519 identities: one key file per node or gateway, mode 0600."""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.identity_utils import load_identity, save_identity
from libp2p.peer.id import ID


def load_or_create(path: str | os.PathLike[str]) -> KeyPair:
    """Load the key pair at ``path``, creating it (mode 0600) on first use.

    Raises ``ValueError`` when the file exists but holds no valid key, and ``OSError`` when
    it cannot be read or written. An existing file readable by others is tightened to 0600
    because the key is the peer's identity on the network.
    """
    path = Path(path)
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return load_identity(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key_pair = create_new_key_pair()
    save_identity(key_pair, path)
    os.chmod(path, 0o600)
    return key_pair


def peer_id_of(key_pair: KeyPair) -> ID:
    return ID.from_pubkey(key_pair.public_key)
