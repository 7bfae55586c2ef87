"""tooti.gateway.auth.KeyCache and tooti.gateway.ledger.Ledger."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
import trio

from tests._pg import raw_rows
from tests._wait import until_async
from tooti.gateway.auth import AuthError, KeyCache, check_scope
from tooti.gateway.ledger import Ledger
from tooti.store import ApiKey, Store, StoreUnavailable, UsageRow, open_store


class FlakyStore:
    """Wraps a real store; can be switched to failing like a downed database."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        # Commit, then report failure: the ambiguous case (lost ack).
        self.fail_after_write = False
        self.delay = 0.0
        self.verify_calls = 0
        self.batches: list[int] = []

    async def verify_api_key(self, plaintext: str) -> ApiKey | None:
        self.verify_calls += 1
        await trio.sleep(self.delay)
        if self.down:
            raise StoreUnavailable("database is down (test)")
        return await self.inner.verify_api_key(plaintext)

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        await trio.sleep(self.delay)
        if self.down:
            raise StoreUnavailable("database is down (test)")
        await self.inner.record_usage(rows)
        self.batches.append(len(rows))
        if self.fail_after_write:
            raise StoreUnavailable("connection lost after commit (test)")


@pytest.fixture
async def inner(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path / 'tooti.db'}")
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def flaky(inner):
    return FlakyStore(inner)


def bearer(key: str) -> str:
    return f"Bearer {key}"


# -- KeyCache --------------------------------------------------------------------


async def test_valid_key_via_either_header_and_cached(flaky, inner):
    key, plaintext = await inner.create_api_key(owner="alice")
    cache = KeyCache(flaky)  # type: ignore[arg-type]
    assert (await cache.authenticate(bearer(plaintext), None)).prefix == key.prefix
    assert (await cache.authenticate(None, plaintext)).prefix == key.prefix
    assert (await cache.authenticate("bearer  " + plaintext, None)).prefix == key.prefix
    assert flaky.verify_calls == 1
    assert cache.healthy and cache.last_error is None


async def test_401_reasons_are_distinct_and_never_echo_the_key(flaky, inner):
    cache = KeyCache(flaky)  # type: ignore[arg-type]
    revoked, revoked_pt = await inner.create_api_key()
    await inner.revoke_api_key(revoked.prefix)
    _, expired_pt = await inner.create_api_key(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    _, valid_pt = await inner.create_api_key()
    unknown_pt = valid_pt[:-4] + "AAAA"
    messages = {}
    for label, auth, x_key in [
        ("missing", None, None),
        ("missing", "Basic abc", None),
        ("unknown", bearer(unknown_pt), None),
        ("malformed", bearer("sk-not-ours"), None),
        ("revoked", bearer(revoked_pt), None),
        ("expired", None, expired_pt),
    ]:
        with pytest.raises(AuthError) as info:
            await cache.authenticate(auth, x_key)
        err = info.value
        assert (err.status, err.code) == (401, "invalid_api_key")
        for secret in (unknown_pt, revoked_pt, expired_pt):
            assert secret not in err.message and secret[3:13] not in err.message
        messages[label] = err.message
    assert "Missing" in messages["missing"]
    assert messages["unknown"] == messages["malformed"] == "Invalid API key."
    assert "revoked" in messages["revoked"]
    assert "expired" in messages["expired"]


async def test_403_from_check_scope(flaky, inner):
    _, plaintext = await inner.create_api_key(namespaces=["team"], models=["llama"])
    key = await KeyCache(flaky).authenticate(bearer(plaintext), None)  # type: ignore[arg-type]
    check_scope(key, "team", "llama")
    for namespace, model, word in [("other", "llama", "namespace"), ("team", "gpt", "model")]:
        with pytest.raises(AuthError) as info:
            check_scope(key, namespace, model)
        assert (info.value.status, info.value.code) == (403, "permission_denied")
        assert word in info.value.message


async def test_revocation_visible_after_ttl(flaky, inner, mock_clock):
    # A manual clock: a loaded CI machine must not make the cache expire early.
    key, plaintext = await inner.create_api_key()
    cache = KeyCache(flaky, ttl=0.2)  # type: ignore[arg-type]
    await cache.authenticate(bearer(plaintext), None)
    assert await inner.revoke_api_key(key.prefix)
    await cache.authenticate(bearer(plaintext), None)  # still cached: allowed
    mock_clock.jump(0.25)
    with pytest.raises(AuthError) as info:
        await cache.authenticate(bearer(plaintext), None)
    assert info.value.status == 401 and "revoked" in info.value.message


async def test_negative_results_cached_briefly(flaky, inner, mock_clock):
    cache = KeyCache(flaky, negative_ttl=0.2)  # type: ignore[arg-type]
    _, plaintext = await inner.create_api_key()
    fake = plaintext[:-4] + "AAAA"
    for _ in range(3):
        with pytest.raises(AuthError):
            await cache.authenticate(bearer(fake), None)
    assert flaky.verify_calls == 1
    mock_clock.jump(0.25)
    with pytest.raises(AuthError):
        await cache.authenticate(bearer(fake), None)
    assert flaky.verify_calls == 2


async def test_stale_keys_served_during_outage_and_503_for_unseen(flaky, inner, caplog, mock_clock):
    _, seen = await inner.create_api_key()
    _, unseen = await inner.create_api_key()
    cache = KeyCache(flaky, ttl=0.05)  # type: ignore[arg-type]
    await cache.authenticate(bearer(seen), None)

    flaky.down = True
    mock_clock.jump(0.1)  # entry is now stale
    with caplog.at_level(logging.WARNING, logger="tooti.gateway.auth"):
        assert await cache.authenticate(bearer(seen), None)
        assert await cache.authenticate(bearer(seen), None)
    assert not cache.healthy and "down" in (cache.last_error or "")
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(AuthError) as info:
        await cache.authenticate(bearer(unseen), None)
    assert (info.value.status, info.value.code) == (503, "service_unavailable")
    assert unseen not in info.value.message

    flaky.down = False
    assert await cache.authenticate(bearer(unseen), None)
    assert cache.healthy


async def test_concurrent_lookups_share_one_query(flaky, inner):
    _, plaintext = await inner.create_api_key()
    flaky.delay = 0.1
    cache = KeyCache(flaky)  # type: ignore[arg-type]
    results: list[ApiKey] = []

    async def one() -> None:
        results.append(await cache.authenticate(bearer(plaintext), None))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert len(results) == 20 and flaky.verify_calls == 1


async def test_concurrent_lookups_share_one_failure(flaky, inner):
    _, plaintext = await inner.create_api_key()
    flaky.delay, flaky.down = 0.1, True
    cache = KeyCache(flaky)  # type: ignore[arg-type]
    statuses: list[int] = []

    async def one() -> None:
        try:
            await cache.authenticate(bearer(plaintext), None)
        except AuthError as exc:
            statuses.append(exc.status)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert statuses == [503] * 5 and flaky.verify_calls == 1


async def test_cancelled_leader_hands_over(flaky, inner):
    _, plaintext = await inner.create_api_key()
    flaky.delay = 0.2
    cache = KeyCache(flaky)  # type: ignore[arg-type]
    got: list[ApiKey] = []

    async def follower() -> None:
        got.append(await cache.authenticate(bearer(plaintext), None))

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(0.05):
            async with trio.open_nursery() as leader:
                leader.start_soon(cache.authenticate, bearer(plaintext), None)
                await trio.sleep(0.01)
                nursery.start_soon(follower)
                await trio.sleep(1)
    assert len(got) == 1 and flaky.verify_calls == 2


# -- Ledger ------------------------------------------------------------------------


def row(i: int) -> UsageRow:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    return UsageRow(f"req-{i}", at, "k1", "ns", "peer", "m", 3, 4, 5, 200)


async def test_ledger_batches_and_stamps_gateway_id(flaky, inner, tmp_path):
    ledger = Ledger(flaky, gateway_id="gw-7", batch_size=50, flush_interval=0.05)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        for i in range(120):
            ledger.record(row(i))  # synchronous: no await on the hot path
        assert ledger.pending == 120
        await until_async(lambda: ledger.pending == 0)
        nursery.cancel_scope.cancel()
    assert await inner.count_usage() == 120
    assert max(flaky.batches) <= 50 and sum(flaky.batches) == 120
    stored = await inner.usage_summary()
    assert stored[0].requests == 120
    assert ledger.db_ok
    url = f"sqlite:///{tmp_path / 'tooti.db'}"
    assert raw_rows(url, "SELECT DISTINCT gateway_id, status FROM usage") == [("gw-7", 200)]


async def test_ledger_keeps_rows_across_outage(flaky, inner, caplog):
    ledger = Ledger(flaky, gateway_id="gw", batch_size=10, flush_interval=0.02, max_backoff=0.1)  # type: ignore[arg-type]
    flaky.down = True
    with caplog.at_level(logging.INFO, logger="tooti.gateway.ledger"):
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            for i in range(35):
                ledger.record(row(i))
            await until_async(lambda: not ledger.db_ok)
            await trio.sleep(0.3)  # several failed retries
            assert ledger.pending == 35
            with pytest.raises(StoreUnavailable):
                await ledger.flush()
            flaky.down = False
            await until_async(lambda: ledger.pending == 0)
            nursery.cancel_scope.cancel()
    assert await inner.count_usage() == 35 and ledger.db_ok
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("database unavailable; 35 usage rows waiting") == 1
    assert any("available again" in m for m in messages)


async def test_ledger_ambiguous_failures_never_double_count(flaky, inner):
    ledger = Ledger(flaky, gateway_id="gw", batch_size=5, flush_interval=0.02, max_backoff=0.05)  # type: ignore[arg-type]
    flaky.fail_after_write = True
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        for i in range(12):
            ledger.record(row(i))
        await until_async(lambda: len(flaky.batches) >= 4)
        flaky.fail_after_write = False
        await until_async(lambda: ledger.pending == 0)
        nursery.cancel_scope.cancel()
    assert await inner.count_usage() == 12


async def test_ledger_final_flush_on_cancellation(flaky, inner):
    # A long interval: only the shutdown flush can write these rows.
    ledger = Ledger(flaky, gateway_id="gw", batch_size=1000, flush_interval=60)  # type: ignore[arg-type]
    flaky.delay = 0.05  # the flush must survive the cancellation it runs under
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        for i in range(10):
            ledger.record(row(i))
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert ledger.pending == 0
    assert await inner.count_usage() == 10


async def test_ledger_final_flush_is_bounded(flaky, inner, caplog):
    ledger = Ledger(flaky, gateway_id="gw", flush_interval=60, final_flush_timeout=0.3)  # type: ignore[arg-type]
    flaky.down = True
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        for i in range(3):
            ledger.record(row(i))
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 2
    assert ledger.pending == 3
    assert any("3 usage rows unwritten" in r.getMessage() for r in caplog.records)


# -- a ledger that cannot be jammed -------------------------------------------------------------


class PoisonStore(FlakyStore):
    """Refuses, like a driver would for bad content, every batch holding a "poison" row."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.refused = 0

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        if any(r.model == "poison" for r in rows) and not self.down:
            self.refused += 1
            raise ValueError("invalid byte sequence (test)")
        await super().record_usage(rows)

    async def record_dead_letters(self, rows: Sequence[tuple[UsageRow, str]]) -> None:
        if self.down:
            raise StoreUnavailable("database is down (test)")
        await self.inner.record_dead_letters(rows)


async def test_one_bad_row_never_blocks_the_rest(inner):
    store = PoisonStore(inner)
    ledger = Ledger(store, gateway_id="gw", batch_size=200, flush_interval=0.02)  # type: ignore[arg-type]
    poison = {17, 450, 999}
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        for i in range(1000):
            r = row(i)
            ledger.record(dataclasses.replace(r, model="poison") if i in poison else r)
        await until_async(lambda: ledger.pending == 0, timeout=30)
        nursery.cancel_scope.cancel()
    assert await inner.count_usage() == 997
    assert await inner.count_dead_letters() == 3
    stats = ledger.stats()
    assert stats["dead_lettered"] == 3 and stats["written"] == 997 and stats["pending"] == 0
    assert stats["lost"] == 0 and stats["last_flush_latency_ms"] is not None
    # bisection: about 2 * log2(200) refusals per bad row, not one per row
    assert store.refused <= 3 * 2 * 9


async def test_outage_during_a_split_dead_letters_nothing(inner):
    store = PoisonStore(inner)
    ledger = Ledger(store, gateway_id="gw", batch_size=50, flush_interval=0.02, max_backoff=0.05)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        store.down = False
        for i in range(20):
            ledger.record(row(i))
        ledger.record(dataclasses.replace(row(20), model="poison"))
        store.down = True  # the database fails while the ledger splits the refused batch
        await until_async(lambda: not ledger.db_ok)
        assert await inner.count_dead_letters() == 0 and ledger.pending == 21
        store.down = False
        await until_async(lambda: ledger.pending == 0)
        nursery.cancel_scope.cancel()
    assert await inner.count_usage() == 20 and await inner.count_dead_letters() == 1


async def test_hostile_values_are_recorded_clamped_and_counted(store_url):
    """NUL in the model name (PostgreSQL refuses NUL in text) and absurd token claims: the
    row is stored, cleaned and flagged; the other rows are unaffected; the sums are sane."""
    store = await open_store(store_url)
    try:
        ledger = Ledger(store, gateway_id="gw", flush_interval=0.02)
        claims = [10**12, 2**63 - 1, -5, 2**64]
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            ledger.record(dataclasses.replace(row(0), model="bad\x00model"))
            for i, claim in enumerate(claims, start=1):
                ledger.record(dataclasses.replace(row(i), prompt_tokens=claim, completion_tokens=claim))
            ledger.record(row(9))
            await until_async(lambda: ledger.pending == 0)
            nursery.cancel_scope.cancel()
        assert await store.count_usage() == 6 and await store.count_dead_letters() == 0
        assert ledger.stats()["clamped"] == 4 and ledger.stats()["normalised"] == 1
        by_id = {
            r[0]: r[1:]
            for r in raw_rows(
                store_url, "SELECT request_id, model, prompt_tokens, completion_tokens, flags FROM usage"
            )
        }
        assert by_id["req-0"][0] == "badmodel" and "text_normalised" in str(by_id["req-0"][3])
        assert by_id["req-1"][1:3] == (10**9, 10**9) and "usage_clamped" in str(by_id["req-1"][3])
        assert by_id["req-3"][1:3] == (0, 0)
        summary = await store.usage_summary()
        assert sum(s.prompt_tokens for s in summary) == 3 * 10**9 + 2 * 3  # three clamped, two sane
    finally:
        await store.aclose()


# -- namespace verifiers in the gateway's accounts -------------------------------------------------


async def test_namespace_verifiers_are_cached_and_changes_reported(inner):
    from tooti.gateway.accounts import StoreAccounts

    accounts = StoreAccounts(inner, KeyCache(inner), Ledger(inner, gateway_id="gw"))
    changes: list[set[str]] = []
    changed = trio.Event()

    def on_change(names: set[str]) -> None:
        nonlocal changed
        changes.append(names)
        changed.set()

    accounts.on_namespace_change(on_change)
    accounts.on_namespace_change(lambda names: 1 / 0)  # a failing callback changes nothing

    async def next_change() -> set[str]:
        nonlocal changed
        with trio.fail_after(10):
            await changed.wait()
        changed = trio.Event()
        return changes.pop()

    await inner.create_namespace("a")
    await inner.create_namespace("b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accounts.refresh_namespaces)
        await until_async(lambda: accounts.namespaces == {"a", "b"})
        first = await accounts.namespace_check("a")
        assert first is not None and first == accounts.verifiers["a"]

        await inner.rotate_namespace_key("a")
        assert await next_change() == {"a"}
        second = await accounts.namespace_check("a")
        assert second is not None and second.revision != first.revision
        await inner.set_allowed_peers("b", ["peer-1"])
        assert await next_change() == {"b"}
        await inner.delete_namespace("b")
        assert await next_change() == {"b"}
        assert await accounts.namespace_check("b") is None
        # a namespace created a moment ago is found before the cache knows it
        await inner.create_namespace("c")
        assert (await accounts.namespace_check("c")) is not None
        nursery.cancel_scope.cancel()
    assert not changes


async def test_namespace_check_during_an_outage(inner):
    from tooti.gateway.accounts import StoreAccounts

    class Down:
        async def namespace_verifier(self, name: str) -> None:
            raise StoreUnavailable("down (test)")

    await inner.create_namespace("a")
    accounts = StoreAccounts(inner, KeyCache(inner), Ledger(inner, gateway_id="gw"))
    accounts._apply_verifiers(await inner.namespace_verifiers())
    cached = accounts.verifiers["a"]
    accounts.store = Down()  # type: ignore[assignment]
    accounts._verifiers_at = trio.current_time() - 60  # stale: would be re-read if it could
    assert await accounts.namespace_check("a") == cached  # served from the cache, like keys
    with pytest.raises(StoreUnavailable):
        await accounts.namespace_check("unknown")


async def test_accounts_record_keeps_both_ids_and_the_source(inner, tmp_path):
    from tooti.gateway.accounts import StoreAccounts

    ledger = Ledger(inner, gateway_id="gw")
    accounts = StoreAccounts(inner, KeyCache(inner), ledger)
    common = {"key": None, "namespace": "", "node_peer_id": "p", "model": "m", "latency_ms": 1, "status": 200}
    # the same client id twice: two requests, two rows (the ledger's identity is the gateway's id)
    for n, flags in enumerate(("", "estimated", "delivered,clamped")):
        accounts.record(
            request_id=f"gw-req-{n}",
            client_request_id="client-chosen",
            prompt_tokens=10**12,
            completion_tokens=3,
            usage_flags=flags,
            **common,
        )
    accounts.record(
        request_id="gw-req-3",
        usage_source="counted",
        flags=["client_disconnected"],
        prompt_tokens=1,
        completion_tokens=1,
        **common,
    )
    await ledger.flush()
    rows = raw_rows(
        f"sqlite:///{tmp_path / 'tooti.db'}",
        "SELECT request_id, client_request_id, usage_source, flags, prompt_tokens FROM usage ORDER BY request_id",
    )
    assert rows == [
        ("gw-req-0", "client-chosen", "backend", "usage_clamped", 10**9),
        ("gw-req-1", "client-chosen", "estimated", "estimated,usage_clamped", 10**9),
        ("gw-req-2", "client-chosen", "counted", "clamped,delivered,usage_clamped", 10**9),
        ("gw-req-3", "", "counted", "client_disconnected", 1),
    ]


async def test_made_up_namespace_names_cannot_flood_the_store(inner):
    from tooti.gateway.accounts import StoreAccounts

    class Counting:
        calls = 0

        async def namespace_verifier(self, name: str) -> None:
            Counting.calls += 1

    accounts = StoreAccounts(inner, KeyCache(inner), Ledger(inner, gateway_id="gw"))
    accounts._apply_verifiers(await inner.namespace_verifiers())  # a fresh, empty cache
    accounts.store = Counting()  # type: ignore[assignment]
    for i in range(500):
        assert await accounts.namespace_check(f"made-up-{i}") is None
    assert Counting.calls <= 10
