"""tooti.store on both engines (SQLite always; PostgreSQL with TOOTI_TEST_POSTGRES_URL)."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import trio

from tests._pg import all_stored_values, raw_rows
from tooti.store import (
    AlreadyExists,
    ApiKey,
    NotFound,
    StoreUnavailable,
    UsageRow,
    open_store,
)
from tooti.store.migrations import latest_version

KEY_RE = re.compile(r"^tt-([0-9a-z]{10})-([0-9A-Za-z]{43})$")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(store_url):
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.aclose()


def usage(
    request_id: str,
    *,
    at: datetime = T0,
    key: str = "k1",
    model: str = "m1",
    prompt: int = 10,
    completion: int = 5,
) -> UsageRow:
    return UsageRow(request_id, at, key, "ns", "peer-1", model, prompt, completion, 42, 200, "gw-1")


# -- migrations -----------------------------------------------------------------


async def test_migrations_are_idempotent(store_url):
    for _ in range(3):
        s = await open_store(store_url)
        assert await s.migrate() == []
        await s.aclose()
    rows = raw_rows(store_url, "SELECT version FROM schema_migrations")
    assert [r[0] for r in rows] == [latest_version()]


async def test_open_without_migrate_then_migrate(store_url):
    s = await open_store(store_url, migrate=False)
    try:
        assert await s.migrate() == [latest_version()]
        assert await s.migrate() == []
    finally:
        await s.aclose()


async def test_concurrent_first_open_is_safe(store_url):
    # Two gateways starting against one empty database at the same time.
    stores = []

    async def opener() -> None:
        stores.append(await open_store(store_url))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(opener)
    assert len(stores) == 4
    ns, secret = await stores[0].create_namespace("shared")
    assert await stores[3].verify_namespace("shared", secret, "")
    for s in stores:
        await s.aclose()
    assert len(raw_rows(store_url, "SELECT version FROM schema_migrations")) == 1


async def test_ping(store):
    assert await store.ping() is True


async def test_unreachable_sqlite_raises_store_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable):
        await open_store(f"sqlite:///{tmp_path}/missing-dir/tooti.db")


async def test_unreachable_postgres_fails_fast():
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        # Port 1 on loopback: nothing listens, connections are refused.
        await open_store("postgresql://nobody:x@127.0.0.1:1/nothing")
    assert time.monotonic() - started < 10


async def test_unsupported_url():
    with pytest.raises(ValueError):
        await open_store("mysql://localhost/db")


# -- namespaces -------------------------------------------------------------------


async def test_namespace_lifecycle(store):
    ns, secret = await store.create_namespace("team-a", owner="alice")
    assert ns.name == "team-a" and ns.owner == "alice" and ns.rotated_at is None
    assert len(secret) >= 43
    assert await store.get_namespace("team-a") == ns
    assert await store.get_namespace("nope") is None
    assert [n.name for n in await store.list_namespaces()] == ["team-a"]

    assert await store.verify_namespace("team-a", secret, "peer-x")
    assert not await store.verify_namespace("team-a", secret + "x", "peer-x")
    assert not await store.verify_namespace("team-a", None, "peer-x")
    assert not await store.verify_namespace("other", secret, "peer-x")

    new_secret = await store.rotate_namespace_secret("team-a")
    assert new_secret != secret
    assert not await store.verify_namespace("team-a", secret, "")
    assert await store.verify_namespace("team-a", new_secret, "")
    rotated = await store.get_namespace("team-a")
    assert rotated is not None and rotated.rotated_at is not None

    assert await store.delete_namespace("team-a") is True
    assert await store.delete_namespace("team-a") is False
    assert not await store.verify_namespace("team-a", new_secret, "")


async def test_namespace_errors(store):
    await store.create_namespace("dup")
    with pytest.raises(AlreadyExists):
        await store.create_namespace("dup")
    with pytest.raises(ValueError):
        await store.create_namespace("bad name!")
    with pytest.raises(ValueError):
        await store.create_namespace("ok", secret="")
    with pytest.raises(NotFound):
        await store.rotate_namespace_secret("missing")
    with pytest.raises(NotFound):
        await store.set_allowed_peers("missing", ["p"])


async def test_allowed_peers(store):
    await store.create_namespace("ns", allowed_peers=["peer-a"])
    assert await store.verify_namespace("ns", None, "peer-a")
    assert await store.verify_namespace("ns", "wrong", "peer-a")
    assert not await store.verify_namespace("ns", None, "peer-b")
    assert not await store.verify_namespace("ns", None, "")

    await store.set_allowed_peers("ns", ["peer-b", "peer-c"])
    assert not await store.verify_namespace("ns", None, "peer-a")
    assert await store.verify_namespace("ns", None, "peer-c")
    ns = await store.get_namespace("ns")
    assert ns is not None and ns.allowed_peer_ids == ("peer-b", "peer-c")


async def test_chosen_secret_uses_argon2_and_generated_uses_sha256(store, store_url):
    _, returned = await store.create_namespace("chosen", secret="correct horse battery")
    assert returned == "correct horse battery"
    await store.create_namespace("generated")
    hashes = dict(raw_rows(store_url, "SELECT name, secret_hash FROM namespaces"))
    assert hashes["chosen"].startswith("$argon2id$")
    assert hashes["generated"].startswith("sha256$")
    assert await store.verify_namespace("chosen", "correct horse battery", "")
    assert not await store.verify_namespace("chosen", "correct horse battery!", "")

    await store.rotate_namespace_secret("generated", "a chosen one now")
    hashes = dict(raw_rows(store_url, "SELECT name, secret_hash FROM namespaces"))
    assert hashes["generated"].startswith("$argon2id$")
    assert await store.verify_namespace("generated", "a chosen one now", "")


async def test_verify_namespace_does_not_block_the_loop(store):
    # argon2 takes tens of ms; a ticking task must keep running meanwhile.
    await store.create_namespace("slow", secret="chosen secret value")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        for _ in range(3):
            assert await store.verify_namespace("slow", "chosen secret value", "")
        nursery.cancel_scope.cancel()
    assert ticks > 3


# -- API keys --------------------------------------------------------------------


async def test_api_key_create_and_verify(store):
    key, plaintext = await store.create_api_key(owner="bob")
    match = KEY_RE.match(plaintext)
    assert match, plaintext
    assert match.group(1) == key.prefix
    assert key.namespaces == () and key.models == () and key.expires_at is None

    verified = await store.verify_api_key(plaintext)
    assert verified == key
    assert verified.allows("any", "thing")

    # Right prefix, wrong secret; unknown prefix; garbage.
    assert await store.verify_api_key(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert await store.verify_api_key(f"tt-zzzzzzzzzz-{match.group(2)}") is None
    for garbage in ["", "tt-", "sk-abc", f"tt-{key.prefix}-", f"tt-{key.prefix}-bad!chars"]:
        assert await store.verify_api_key(garbage) is None

    other, _ = await store.create_api_key()
    assert [k.prefix for k in await store.list_api_keys()] == [key.prefix, other.prefix]


async def test_api_key_revoke(store):
    key, plaintext = await store.create_api_key()
    assert await store.revoke_api_key(key.prefix) is True
    assert await store.revoke_api_key(key.prefix) is False
    assert await store.revoke_api_key("unknown") is False
    verified = await store.verify_api_key(plaintext)
    assert verified is not None and verified.is_revoked() and verified.revoked_at is not None


async def test_api_key_expiry(store):
    past = datetime.now(UTC) - timedelta(seconds=1)
    key, plaintext = await store.create_api_key(expires_at=past)
    verified = await store.verify_api_key(plaintext)
    assert verified is not None and verified.is_expired() and not verified.is_revoked()
    assert verified.expires_at == past.replace(microsecond=past.microsecond)

    future = datetime.now(UTC) + timedelta(days=30)
    _, plaintext = await store.create_api_key(expires_at=future)
    verified = await store.verify_api_key(plaintext)
    assert verified is not None and not verified.is_expired()
    assert verified.is_expired(now=future + timedelta(seconds=1))


async def test_api_key_scopes(store):
    key, plaintext = await store.create_api_key(namespaces=["a", "b"], models=["m1"])
    verified = await store.verify_api_key(plaintext)
    assert verified is not None
    assert verified.namespaces == ("a", "b") and verified.models == ("m1",)
    assert verified.allows("a", "m1") and verified.allows("b", "m1")
    assert not verified.allows("c", "m1")
    assert not verified.allows("a", "m2")
    only_models = ApiKey("p", "", (), ("m1",), None, None, T0)
    assert only_models.allows("anything", "m1") and not only_models.allows("x", "m2")
    with pytest.raises(TypeError):
        await store.create_api_key(namespaces="a")


async def test_secrets_never_stored_in_plaintext(store, store_url):
    _, generated = await store.create_namespace("gen")
    _, chosen = await store.create_namespace("cho", secret="my very own secret")
    rotated = await store.rotate_namespace_secret("gen")
    _, key = await store.create_api_key(owner="x")
    key_secret = KEY_RE.match(key).group(2)  # type: ignore[union-attr]
    needles = [generated, chosen, rotated, key, key_secret]
    values = all_stored_values(store_url)
    assert {t for t, _, _ in values} >= {"namespaces", "api_keys", "schema_migrations"}
    for table, column, value in values:
        for needle in needles:
            assert needle not in value, f"secret found in {table}.{column}"


# -- usage -------------------------------------------------------------------------


async def test_record_usage_is_idempotent(store):
    batch = [usage(f"r{i}") for i in range(5)]
    await store.record_usage(batch)
    await store.record_usage(batch)  # a retried batch
    await store.record_usage([*batch[2:], usage("r5")])  # overlapping
    await store.record_usage([usage("r6"), usage("r6")])  # duplicate inside one batch
    await store.record_usage([])
    assert await store.count_usage() == 7


async def test_usage_summary_grouping(store):
    day1, day2 = T0, T0 + timedelta(days=1)
    await store.record_usage(
        [
            usage("a", at=day1, key="k1", model="m1", prompt=10, completion=1),
            usage("b", at=day1 + timedelta(hours=3), key="k1", model="m1", prompt=20, completion=2),
            usage("c", at=day1, key="k1", model="m2", prompt=5, completion=5),
            usage("d", at=day2, key="k1", model="m1", prompt=1, completion=1),
            usage("e", at=day1, key="k2", model="m1", prompt=7, completion=7),
        ]
    )
    got = {
        (s.key_prefix, s.day, s.model): (s.requests, s.prompt_tokens, s.completion_tokens)
        for s in await store.usage_summary()
    }
    assert got == {
        ("k1", date(2026, 3, 1), "m1"): (2, 30, 3),
        ("k1", date(2026, 3, 1), "m2"): (1, 5, 5),
        ("k1", date(2026, 3, 2), "m1"): (1, 1, 1),
        ("k2", date(2026, 3, 1), "m1"): (1, 7, 7),
    }
    only_k2 = await store.usage_summary(key_prefix="k2")
    assert [(s.key_prefix, s.requests) for s in only_k2] == [("k2", 1)]
    since = await store.usage_summary(since=day2)
    assert [(s.key_prefix, s.day) for s in since] == [("k1", date(2026, 3, 2))]
    assert await store.usage_summary(key_prefix="nobody") == []


async def test_usage_days_are_utc(store):
    # 23:30 at UTC-5 on March 1st is March 2nd in UTC.
    local = datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    await store.record_usage([usage("tz", at=local)])
    [summary] = await store.usage_summary()
    assert summary.day == date(2026, 3, 2)


async def test_thousand_rows_in_batches(store):
    rows = [usage(f"req-{i:04d}", model=f"m{i % 3}", prompt=i, completion=1) for i in range(1000)]
    for start in range(0, 1000, 200):
        await store.record_usage(rows[start : start + 200])
    await store.record_usage(rows[100:300])  # retried batches change nothing
    assert await store.count_usage() == 1000
    summary = await store.usage_summary()
    assert sum(s.requests for s in summary) == 1000
    assert sum(s.prompt_tokens for s in summary) == sum(range(1000))
