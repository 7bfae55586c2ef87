"""Keys mode: the gateway's accounts (store + key cache + usage ledger) behind the app's
``Accounts`` interface, and the namespace check nodes must pass to join.

Every gateway process opens the same database (SQLite on one machine, PostgreSQL for
several); nothing about nodes is ever stored in it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from tooti.config import GatewayConfig
from tooti.p2p.identity import load_or_create, peer_id_of
from tooti.store import ApiKey, Store, StoreUnavailable, UsageRow, open_store

from .auth import AuthError, KeyCache, check_scope
from .errors import HTTPError
from .ledger import Ledger
from .run import Started, run_gateway

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.gateway")

# How often the namespace list is re-read; the read doubles as the database health probe.
_NAMESPACE_REFRESH = 1.0


class StoreAccounts:
    """The app's accounts: API keys (cached), scopes, the usage ledger, health."""

    def __init__(self, store: Store, keys: KeyCache, ledger: Ledger) -> None:
        self.store = store
        self.keys = keys
        self.ledger = ledger
        self.namespaces: set[str] = set()
        self.namespaces_ok = True

    async def authenticate(self, authorization: str | None, x_api_key: str | None) -> ApiKey:
        try:
            return await self.keys.authenticate(authorization, x_api_key)
        except AuthError as exc:
            raise HTTPError(exc.status, exc.message, code=exc.code) from None

    def scope(self, key: ApiKey) -> set[str] | None:
        return set(key.namespaces) if key.namespaces else None

    def check(self, key: ApiKey, namespace: str, model: str) -> None:
        try:
            check_scope(key, namespace, model)
        except AuthError as exc:
            raise HTTPError(exc.status, exc.message, code=exc.code) from None

    def record(
        self,
        *,
        request_id: str,
        client_request_id: str = "",
        key: ApiKey | None,
        namespace: str,
        node_peer_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
        status: int,
        usage_flags: str = "",
    ) -> None:
        # client_request_id and usage_flags are for the ledger row once it has columns for them.
        self.ledger.record(
            UsageRow(
                request_id=request_id,
                at=datetime.now(UTC),
                key_prefix=key.prefix if key else "",
                namespace=namespace,
                node_peer_id=node_peer_id,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
                status=status,
                gateway_id="",
            )
        )

    def health(self) -> dict[str, Any]:
        # The probe (namespace refresh) and the ledger's writes speak for the database; the key
        # cache's last lookup does not, as it only looks when a key's entry is stale.
        ok = self.ledger.db_ok and self.namespaces_ok
        out: dict[str, Any] = {"ok": ok, "pending_usage_rows": self.ledger.pending}
        if not ok:
            out["error"] = "database unavailable" + (
                f": {self.keys.last_error}" if self.keys.last_error else ""
            )
        return out

    async def usage(self, key: ApiKey | None, since: datetime | None) -> list[dict[str, Any]]:
        try:
            rows = await self.store.usage_summary(key_prefix=key.prefix if key else None, since=since)
        except StoreUnavailable:
            raise HTTPError(
                503,
                "the usage database is unavailable; retry shortly",
                code="service_unavailable",
                headers={"Retry-After": "2"},
            ) from None
        return [
            {
                "key": r.key_prefix,
                "day": str(r.day),
                "model": r.model,
                "requests": r.requests,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens,
            }
            for r in rows
        ]

    async def namespace_check(self, namespace: str) -> tuple[str, tuple[str, ...]] | None:
        # StoreUnavailable propagates: the control stream is reset and the node retries later,
        # rather than being told its (possibly right) secret is wrong.
        return await self.store.namespace_verifier(namespace)

    async def refresh_namespaces(self) -> None:
        """Keep the set of registered namespace names fresh (for `ns:model` parsing)."""
        was_ok = True
        while True:
            try:
                self.namespaces = {n.name for n in await self.store.list_namespaces()}
                self.namespaces_ok = True
                if not was_ok:
                    log.warning("database is reachable again")
                was_ok = True
            except StoreUnavailable as exc:
                self.namespaces_ok = False
                if was_ok:
                    log.error("database unavailable: %s; serving cached keys, queueing usage rows", exc)
                was_ok = False
            await trio.sleep(_NAMESPACE_REFRESH)


async def serve_with_accounts(
    cfg: GatewayConfig, *, task_status: TaskStatus[Started] = trio.TASK_STATUS_IGNORED
) -> None:
    store = await open_store(cfg.database.url)
    try:
        keys = KeyCache(store)
        gateway_id = cfg.gateway.id or str(peer_id_of(load_or_create(cfg.gateway.identity_key_file)))
        ledger = Ledger(store, gateway_id=gateway_id)
        accounts = StoreAccounts(store, keys, ledger)
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            nursery.start_soon(accounts.refresh_namespaces)
            started = await nursery.start(
                lambda task_status: run_gateway(
                    cfg,
                    accounts=accounts,
                    namespace_check=accounts.namespace_check,
                    known_namespaces=lambda: accounts.namespaces,
                    task_status=task_status,
                )
            )
            task_status.started(started)
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
