"""tooti.gateway.auth.KeyCache and tooti.gateway.ledger.Ledger."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import trio

from tests._pg import raw_rows
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


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


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
        await wait_until(lambda: ledger.pending == 0)
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
            await wait_until(lambda: not ledger.db_ok)
            await trio.sleep(0.3)  # several failed retries
            assert ledger.pending == 35
            with pytest.raises(StoreUnavailable):
                await ledger.flush()
            flaky.down = False
            await wait_until(lambda: ledger.pending == 0)
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
        await wait_until(lambda: len(flaky.batches) >= 4)
        flaky.fail_after_write = False
        await wait_until(lambda: ledger.pending == 0)
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
