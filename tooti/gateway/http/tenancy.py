"""Who may see and use which nodes: one rule for every key.

A key's scope is the set of namespaces it was issued for ("" is the public pool); a key with
no scope (or open mode) may use every namespace. A request addressed ``namespace:model`` goes
only to that namespace's nodes, and only if the scope includes it. A plain ``model`` goes to
the public pool and to the namespaces in the key's scope — so an unscoped key's plain name may
reach any node, and a scoped key's only its own. Listings (``/v1/models``,
``/v1/network/nodes``) show exactly the nodes those rules let the key use.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..registry import NodeEntry


def allowed(namespace: str, scope: set[str] | None) -> bool:
    return scope is None or namespace == "" or namespace in scope


def visible(entries: Iterable[NodeEntry], scope: set[str] | None) -> list[NodeEntry]:
    return [e for e in entries if allowed(e.namespace, scope)]


def plain_scope(scope: set[str] | None) -> set[str] | None:
    """The namespaces a plain (unprefixed) model name may be served from under ``scope``."""
    return None if scope is None else {"", *scope}
