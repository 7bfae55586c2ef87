"""Keys mode: the gateway's accounts (store + key cache + usage ledger) behind the app's
``Accounts`` interface, and the namespace verifiers nodes must satisfy to join (public keys
and allow-listed peer ids, cached and refreshed every second; see ``on_namespace_change``).

Every gateway process opens the same database (SQLite on one machine, PostgreSQL for
several); nothing about nodes is ever stored in it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from tooti.config import GatewayConfig
from tooti.p2p.identity import load_or_create, peer_id_of
from tooti.store import ApiKey, NamespaceVerifier, Store, StoreUnavailable, UsageRow, open_store

from .auth import AuthError, KeyCache, check_scope
from .errors import HTTPError
from .ledger import Ledger
from .run import Started, run_gateway

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.gateway")

# How often the namespace verifiers are re-read; the read doubles as the database health probe.
_NAMESPACE_REFRESH = 1.0
# A cached verifier older than this is re-read from the store before a node is admitted with it.
_VERIFIER_MAX_AGE = 2.0
# Reads per second for names a fresh cache does not know (a namespace created a moment ago).
_DIRECT_LOOKUPS = 10


def _source_of(flags: Iterable[str]) -> str:
    marks = {f.strip() for f in flags}
    if "estimated" in marks:
        return "estimated"
    if marks & {"delivered", "counted"}:
        return "counted"
    return "backend"


class StoreAccounts:
    """The app's accounts: API keys (cached), scopes, the usage ledger, health; and the
    gateway's namespace verifiers (cached, refreshed every second)."""

    def __init__(self, store: Store, keys: KeyCache, ledger: Ledger) -> None:
        self.store = store
        self.keys = keys
        self.ledger = ledger
        self.namespaces: set[str] = set()
        self.namespaces_ok = True
        self.verifiers: dict[str, NamespaceVerifier] = {}
        self._verifiers_at: float | None = None  # trio clock of the last successful refresh
        self._on_change: list[Callable[[set[str]], None]] = []
        self._lookups: collections.deque[float] = collections.deque()  # direct reads, last second

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
        key: ApiKey | None,
        namespace: str,
        node_peer_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
        status: int,
        client_request_id: str = "",
        usage_source: str | None = None,
        flags: Iterable[str] = (),
        usage_flags: str = "",
    ) -> None:
        """Queue one finished request for the ledger; never blocks, never raises for odd data.

        ``request_id`` must be the gateway's own id of the request (the ledger's identity of
        it); ``client_request_id`` is the client's ``X-Request-ID``, recorded only.
        ``usage_source`` is one of ``tooti.store.USAGE_SOURCES``; ``flags`` (an iterable) and
        ``usage_flags`` (comma-separated) are markers such as ``clamped`` or ``estimated``, and
        both are kept.  Without ``usage_source`` it follows from the flags: ``estimated`` ->
        "estimated", ``delivered``/``counted`` -> "counted", otherwise "backend".  Every value is
        normalised (``tooti.store.usage``): text cleaned and bounded, token figures clamped to
        [0, 10^9] and flagged ``usage_clamped``.
        """
        marks = [*(flags.split(",") if isinstance(flags, str) else flags), *usage_flags.split(",")]
        if usage_source is None:
            usage_source = _source_of(marks)
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
                client_request_id=client_request_id,
                usage_source=usage_source,
                flags=",".join(m for m in marks if m),
            )
        )

    def health(self) -> dict[str, Any]:
        # The probe (namespace refresh) and the ledger's writes speak for the database; the key
        # cache's last lookup does not, as it only looks when a key's entry is stale.
        ok = self.ledger.db_ok and self.namespaces_ok
        out: dict[str, Any] = {
            "ok": ok,
            "pending_usage_rows": self.ledger.pending,
            # pending, written, dead_lettered, lost, clamped, normalised, last_flush_latency_ms
            "usage_ledger": self.ledger.stats(),
        }
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
                # Bounded per row (10^9 each), so this cannot leave 64 bits.
                "total_tokens": r.prompt_tokens + r.completion_tokens,
                "flagged_requests": r.flagged_requests,
            }
            for r in rows
        ]

    # -- namespaces ---------------------------------------------------------------------------

    def on_namespace_change(self, callback: Callable[[set[str]], None]) -> None:
        """Call ``callback(names)`` from the refresh loop whenever namespaces whose verifier
        this gateway had cached changed revision (keys rotated, allow-list edited, grace period
        over) or disappeared (deleted).  Seen within one refresh (about a second) of the
        commit.  The callback runs on the trio loop and must not block; an exception it raises
        is logged and ignored."""
        self._on_change.append(callback)

    async def namespace_check(self, namespace: str) -> NamespaceVerifier | None:
        """The verifier a joining node is checked against, or None for an unknown namespace.

        Served from the cache while it is at most ``_VERIFIER_MAX_AGE`` old; otherwise (and
        for a name the cache does not know, so a namespace created a moment ago works; at most
        ``_DIRECT_LOOKUPS`` such reads a second) read from the store.  When the store is down a cached verifier is served, as cached API
        keys are; with none, StoreUnavailable propagates: the control stream is reset and the
        node retries later, rather than being told its (possibly right) key is wrong.
        """
        cached = self.verifiers.get(namespace)
        fresh = (
            self._verifiers_at is not None and trio.current_time() - self._verifiers_at <= _VERIFIER_MAX_AGE
        )
        if cached is not None and fresh:
            return cached
        if fresh and not self._may_look_up():
            # Joining peers are not authenticated yet: a flood of made-up namespace names must
            # not become a flood of queries. The next refresh (within a second) sees new names.
            return None
        try:
            return await self.store.namespace_verifier(namespace)
        except StoreUnavailable:
            if cached is not None:
                return cached
            raise

    def _may_look_up(self) -> bool:
        """At most ``_DIRECT_LOOKUPS`` store reads per second for names the cache lacks."""
        now = trio.current_time()
        while self._lookups and self._lookups[0] <= now - 1.0:
            self._lookups.popleft()
        if len(self._lookups) >= _DIRECT_LOOKUPS:
            return False
        self._lookups.append(now)
        return True

    def _apply_verifiers(self, new: dict[str, NamespaceVerifier]) -> None:
        old, self.verifiers = self.verifiers, new
        self.namespaces = set(new)
        self._verifiers_at = trio.current_time()
        changed = {n for n, v in old.items() if n not in new or new[n].revision != v.revision}
        if not changed:
            return
        log.info("namespaces changed: %s", ", ".join(sorted(changed)))
        for callback in list(self._on_change):
            try:
                callback(set(changed))
            except Exception:
                log.exception("namespace change callback failed")

    async def refresh_namespaces(self) -> None:
        """Keep the namespace verifiers (and so the set of names, for `ns:model` parsing)
        fresh, and tell ``on_namespace_change`` callbacks what changed.  The read doubles as
        the database health probe."""
        was_ok = True
        while True:
            try:
                self._apply_verifiers(await self.store.namespace_verifiers())
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
            # Keys rotated or a namespace deleted: its joined nodes must prove themselves again.
            accounts.on_namespace_change(started.gateway.control.namespace_changed)
            task_status.started(started)
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
