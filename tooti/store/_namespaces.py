"""Namespaces and their public keys (the store half of namespace membership).

A namespace's credential is an Ed25519 key pair (``tooti.p2p.keys``).  The store keeps only
public halves, so whoever reads the database learns nothing that lets them join: a proof is a
signature only the private key can make.  Keys are generated here only for the operator's
convenience (``tooti namespace create`` prints the private half once); an operator may
instead register a public key made elsewhere, so the private key never touches the gateway.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from tooti.p2p import keys

from ._base import (
    AlreadyExists,
    Engine,
    Namespace,
    NamespaceKey,
    NamespaceVerifier,
    NotFound,
    Tx,
    utcnow,
)

__all__ = ["MAX_GRACE_SECONDS", "NamespaceStore", "fingerprint"]

T = TypeVar("T")

#: Longest grace period a rotation may keep the old key valid for (30 days).
MAX_GRACE_SECONDS = 30 * 86400

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NS_COLUMNS = "name, owner, allowed_peer_ids, created_at, rotated_at"
_KEY_COLUMNS = "namespace, public_key, created_at, expires_at"


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"invalid namespace name {name!r}: use 1-64 letters, digits, '.', '_', '-'")


def str_tuple(values: Sequence[str], what: str) -> tuple[str, ...]:
    # Scopes and peer lists are stored as JSON arrays; reject the classic
    # mistake of passing a bare string (which would become one-char items).
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of strings, not a string")
    out: list[str] = []
    for v in values:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{what} entries must be non-empty strings")
        if v not in out:
            out.append(v)
    return tuple(out)


def fingerprint(public_key: str) -> str:
    """Short, stable name of a public key for listings: ``sha256:`` and 16 hex digits of the
    SHA-256 of its normalised text."""
    return "sha256:" + hashlib.sha256(public_key.encode()).hexdigest()[:16]


def _new_pair(public_key: str | None) -> tuple[str, str | None]:
    """(public key text to store, private key text to hand out once or None)."""
    if public_key is not None:
        return keys.check_public(public_key, keys.NAMESPACE_PUBLIC), None
    private = keys.generate(keys.NAMESPACE_PRIVATE)
    return keys.public_of(private, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC), private


class NamespaceStore:
    """Namespace methods of :class:`tooti.store.Store` (a mixin: it needs ``_backend`` and
    ``_run`` from the store)."""

    _backend: Engine

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> T: ...

    # -- reading ------------------------------------------------------------------------------

    def _keys_by_name(self, rows: Sequence[Sequence[Any]]) -> dict[str, list[NamespaceKey]]:
        from_db = self._backend.from_db_time
        out: dict[str, list[NamespaceKey]] = {}
        for namespace, public_key, created, expires in rows:
            out.setdefault(namespace, []).append(
                NamespaceKey(
                    public_key=public_key,
                    fingerprint=fingerprint(public_key),
                    created_at=from_db(created),
                    expires_at=None if expires is None else from_db(expires),
                )
            )
        for found in out.values():
            found.sort(key=lambda k: (k.created_at, k.public_key))
        return out

    def _namespace(self, row: Sequence[Any], ns_keys: Sequence[NamespaceKey]) -> Namespace:
        name, owner, peers, created, rotated = row
        return Namespace(
            name=name,
            owner=owner,
            allowed_peer_ids=tuple(json.loads(peers)),
            created_at=self._backend.from_db_time(created),
            rotated_at=None if rotated is None else self._backend.from_db_time(rotated),
            keys=tuple(ns_keys),
        )

    async def _load(self, name: str | None) -> list[Namespace]:
        def read(tx: Tx) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            if name is None:
                ns_rows = tx.query(f"SELECT {_NS_COLUMNS} FROM namespaces ORDER BY name")
                key_rows = tx.query(f"SELECT {_KEY_COLUMNS} FROM namespace_keys")
            else:
                ns_rows = tx.query(f"SELECT {_NS_COLUMNS} FROM namespaces WHERE name = ?", (name,))
                key_rows = tx.query(f"SELECT {_KEY_COLUMNS} FROM namespace_keys WHERE namespace = ?", (name,))
            return ns_rows, key_rows

        ns_rows, key_rows = await self._run(read, write=False)
        by_name = self._keys_by_name(key_rows)
        return [self._namespace(r, by_name.get(r[0], ())) for r in ns_rows]

    async def get_namespace(self, name: str) -> Namespace | None:
        found = await self._load(name)
        return found[0] if found else None

    async def list_namespaces(self) -> list[Namespace]:
        return await self._load(None)

    @staticmethod
    def verifier_of(ns: Namespace, now: datetime | None = None) -> NamespaceVerifier:
        """The verifier of ``ns`` at ``now``: its active public keys and allow-list, and a
        revision derived from exactly those (plus the creation time, so a namespace deleted
        and re-created under the same name gets a new revision)."""
        now = utcnow() if now is None else now
        active = tuple(sorted(k.public_key for k in ns.keys if k.is_active(now)))
        peers = tuple(sorted(ns.allowed_peer_ids))
        digest = hashlib.sha256(
            json.dumps([ns.name, ns.created_at.isoformat(), active, peers]).encode()
        ).hexdigest()
        return NamespaceVerifier(ns.name, active, peers, digest[:24])

    async def namespace_verifier(self, name: str) -> NamespaceVerifier | None:
        """What a gateway checks a joining node against, or None for an unknown namespace.
        Public material only."""
        ns = await self.get_namespace(name)
        return None if ns is None else self.verifier_of(ns)

    async def namespace_verifiers(self) -> dict[str, NamespaceVerifier]:
        """Every namespace's verifier, read in one transaction (for a gateway's cache)."""
        now = utcnow()
        return {ns.name: self.verifier_of(ns, now) for ns in await self.list_namespaces()}

    # -- writing ------------------------------------------------------------------------------

    async def create_namespace(
        self,
        name: str,
        *,
        owner: str = "",
        public_key: str | None = None,
        allowed_peers: Sequence[str] = (),
    ) -> tuple[Namespace, str | None]:
        """Create a namespace with one key; return it and the private key text.

        With ``public_key=None`` a key pair is generated and its private half returned: this
        is the only time it exists outside the caller's hands, the store keeps the public half
        only.  With an operator-made ``public_key`` (``tooti-ns-pub-v1:...``) the second item
        is None.  Raises AlreadyExists if the name is taken, ValueError if a name or key is
        invalid.
        """
        check_name(name)
        peers = str_tuple(allowed_peers, "allowed_peers")
        public, private = _new_pair(public_key)
        now = utcnow()
        to_db = self._backend.to_db_time

        def insert(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO namespaces (name, secret_hash, allowed_peer_ids, owner,"
                " created_at, rotated_at) VALUES (?, '', ?, ?, ?, NULL)",
                (name, json.dumps(list(peers)), owner, to_db(now)),
            )
            tx.execute(
                f"INSERT INTO namespace_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, NULL)",
                (name, public, to_db(now)),
            )

        try:
            await self._run(insert)
        except AlreadyExists:
            raise AlreadyExists(f"namespace {name!r} already exists") from None
        key = NamespaceKey(public, fingerprint(public), now, None)
        return Namespace(name, owner, peers, now, None, (key,)), private

    async def rotate_namespace_key(
        self, name: str, *, public_key: str | None = None, grace: float = 0.0
    ) -> tuple[NamespaceKey, str | None]:
        """Give ``name`` a new key; return it and its private text (None for a given
        ``public_key``).

        With ``grace=0`` (the default) every old key stops verifying when this commits; with
        ``grace`` seconds (at most :data:`MAX_GRACE_SECONDS`) the old keys stay valid until then
        (a key already expiring sooner keeps its earlier end).  Raises NotFound for an unknown
        namespace, ValueError for a bad key or grace.
        """
        if not 0 <= grace <= MAX_GRACE_SECONDS:
            raise ValueError(f"grace must be between 0 and {MAX_GRACE_SECONDS} seconds")
        public, private = _new_pair(public_key)
        now = utcnow()
        to_db = self._backend.to_db_time
        until = to_db(now + timedelta(seconds=grace))

        def rotate(tx: Tx) -> bool:
            if tx.execute("UPDATE namespaces SET rotated_at = ? WHERE name = ?", (to_db(now), name)) == 0:
                return False
            if grace > 0:
                tx.execute(
                    "UPDATE namespace_keys SET expires_at = ? WHERE namespace = ?"
                    " AND (expires_at IS NULL OR expires_at > ?)",
                    (until, name, until),
                )
                tx.execute(
                    "DELETE FROM namespace_keys WHERE namespace = ? AND expires_at <= ?",
                    (name, to_db(now)),
                )
            else:
                tx.execute("DELETE FROM namespace_keys WHERE namespace = ?", (name,))
            # Re-registering a key that is in its grace period makes it permanent again.
            tx.execute("DELETE FROM namespace_keys WHERE namespace = ? AND public_key = ?", (name, public))
            tx.execute(
                f"INSERT INTO namespace_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, NULL)",
                (name, public, to_db(now)),
            )
            return True

        if not await self._run(rotate):
            raise NotFound(f"no namespace named {name!r}")
        return NamespaceKey(public, fingerprint(public), now, None), private

    async def delete_namespace(self, name: str) -> bool:
        """Delete a namespace and its keys; return False if it did not exist."""

        def delete(tx: Tx) -> int:
            tx.execute("DELETE FROM namespace_keys WHERE namespace = ?", (name,))
            return tx.execute("DELETE FROM namespaces WHERE name = ?", (name,))

        return await self._run(delete) > 0

    async def set_allowed_peers(self, name: str, peers: Sequence[str]) -> None:
        """Replace the list of peer ids admitted without a key proof.

        Raises NotFound for an unknown namespace.
        """
        encoded = json.dumps(list(str_tuple(peers, "peers")))
        count = await self._run(
            lambda tx: tx.execute(
                "UPDATE namespaces SET allowed_peer_ids = ? WHERE name = ?",
                (encoded, name),
            )
        )
        if count == 0:
            raise NotFound(f"no namespace named {name!r}")
