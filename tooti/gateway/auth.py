"""API key authentication for the gateway, with a short-lived cache.

Every request presents an API key; checking it against the database on every
request would make the database a hard dependency of the hot path.  The
:class:`KeyCache` remembers verification results briefly, collapses
concurrent lookups of one key into a single query, and keeps serving keys it
has verified before while the database is unreachable.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from dataclasses import dataclass

import trio

from ..store import ApiKey, Store, StoreUnavailable

__all__ = ["AuthError", "KeyCache", "check_scope"]

log = logging.getLogger(__name__)


class AuthError(Exception):
    """A request is not authorised.  Maps directly onto an HTTP error body.

    ``status`` is 401 (no valid key), 403 (key lacks scope) or 503 (cannot
    verify right now).  Messages never contain the presented key.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"AuthError({self.status}, {self.code!r}, {self.message!r})"


def check_scope(key: ApiKey, namespace: str, model: str) -> None:
    """Raise AuthError(403, "permission_denied") unless ``key`` may use
    ``model`` in ``namespace``."""
    if key.namespaces and namespace not in key.namespaces:
        raise AuthError(403, "permission_denied", f"This API key may not use namespace {namespace!r}.")
    if key.models and model not in key.models:
        raise AuthError(403, "permission_denied", f"This API key may not use model {model!r}.")


@dataclass
class _Entry:
    key: ApiKey | None  # None: the store said "no such key"
    fresh_until: float  # trio clock


class _Flight:
    """One in-progress store lookup that concurrent callers wait on."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.finished = False
        self.key: ApiKey | None = None
        self.error: BaseException | None = None


def _extract_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


class KeyCache:
    """Verifies API keys against ``store``, caching results in memory.

    Freshness contract: a verified key is re-checked against the store once
    its entry is older than ``ttl`` seconds, so a revocation (or expiry
    change) committed to the database takes effect on this gateway within
    ``ttl`` plus the duration of one store lookup -- with the defaults
    (ttl=2 s, store timeouts ~3 s) within 5 s.  Unknown keys are remembered
    for ``negative_ttl`` seconds, so a key created just now works after at
    most that long.

    Outage contract: when the store raises StoreUnavailable, a key verified
    before is served from its (stale) entry -- revocations made during the
    outage are therefore not seen until the database is back -- and only
    keys never seen yield 503.

    Expiry is evaluated against the wall clock on every request, so a key
    expires on time even while cached.  Entries are keyed by the sha256 of
    the presented key: the plaintext is never kept.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 2.0,
        negative_ttl: float = 1.0,
        max_entries: int = 100_000,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        # LRU order: bounded so a flood of random keys cannot exhaust memory.
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._flights: dict[bytes, _Flight] = {}
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._healthy = True

    @property
    def healthy(self) -> bool:
        """False while the most recent store lookup failed."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """Description of the most recent store failure (for /healthz)."""
        return self._last_error

    @property
    def last_error_at(self) -> float | None:
        """``trio.current_time()`` of the most recent store failure."""
        return self._last_error_at

    def invalidate(self, plaintext: str | None = None) -> None:
        """Forget one key (or everything), e.g. after an admin action."""
        if plaintext is None:
            self._entries.clear()
        else:
            self._entries.pop(hashlib.sha256(plaintext.encode()).digest(), None)

    async def authenticate(self, headers_authorization: str | None, x_api_key: str | None) -> ApiKey:
        """Return the verified, usable key from the request headers.

        Accepts ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
        Raises AuthError 401 ``invalid_api_key`` (missing, unknown, revoked,
        expired: distinct messages) or 503 ``service_unavailable`` when the
        store is down and the key was never verified before.
        """
        plaintext = _extract_key(headers_authorization, x_api_key)
        if plaintext is None:
            raise AuthError(
                401,
                "invalid_api_key",
                "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'.",
            )
        key = await self._lookup(plaintext)
        if key is None:
            raise AuthError(401, "invalid_api_key", "Invalid API key.")
        if key.is_revoked():
            raise AuthError(401, "invalid_api_key", "This API key has been revoked.")
        if key.is_expired():
            raise AuthError(401, "invalid_api_key", "This API key has expired.")
        return key

    async def _lookup(self, plaintext: str) -> ApiKey | None:
        digest = hashlib.sha256(plaintext.encode()).digest()
        entry = self._entries.get(digest)
        if entry is not None and entry.fresh_until > trio.current_time():
            self._entries.move_to_end(digest)
            return entry.key
        try:
            key = await self._fetch_shared(digest, plaintext)
        except StoreUnavailable as exc:
            self._note_failure(exc)
            # Re-read: another task may have stored a result meanwhile.
            entry = self._entries.get(digest)
            if entry is not None:
                return entry.key
            raise AuthError(
                503,
                "service_unavailable",
                "Cannot verify the API key right now; please retry.",
            ) from None
        self._remember(digest, key)
        return key

    async def _fetch_shared(self, digest: bytes, plaintext: str) -> ApiKey | None:
        """Query the store, sharing one query among concurrent callers."""
        while (flight := self._flights.get(digest)) is not None:
            await flight.done.wait()
            if flight.error is not None:
                # A fresh exception per waiter: one instance raised in many
                # tasks would accumulate everyone's tracebacks.
                raise StoreUnavailable(str(flight.error)) from flight.error
            if flight.finished:
                return flight.key
            # The leader was cancelled without an answer: take over.
        flight = _Flight()
        self._flights[digest] = flight
        try:
            flight.key = await self._store.verify_api_key(plaintext)
            flight.finished = True
            if not self._healthy:
                log.warning("API key store available again")
                self._healthy = True
            return flight.key
        except StoreUnavailable as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[digest]
            flight.done.set()

    def _remember(self, digest: bytes, key: ApiKey | None) -> None:
        ttl = self._ttl if key is not None else self._negative_ttl
        self._entries[digest] = _Entry(key, trio.current_time() + ttl)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def _note_failure(self, exc: StoreUnavailable) -> None:
        if self._healthy:
            log.warning("API key store unavailable; serving cached keys: %s", exc)
        self._healthy = False
        self._last_error = str(exc)
        self._last_error_at = trio.current_time()
