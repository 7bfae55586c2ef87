"""tooti.store on both engines (SQLite always; PostgreSQL with TOOTI_TEST_POSTGRES_URL)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import time
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import trio

from tests._pg import all_stored_values, raw_rows
from tooti.p2p import keys
from tooti.store import (
    AlreadyExists,
    ApiKey,
    NamespaceVerifier,
    NotFound,
    Store,
    StoreUnavailable,
    UsageRow,
    open_store,
)
from tooti.store.migrations import latest_version
from tooti.store.usage import MAX_TOKENS, normalise

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
    assert sorted(r[0] for r in rows) == list(range(1, latest_version() + 1))


async def test_open_without_migrate_then_migrate(store_url):
    s = await open_store(store_url, migrate=False)
    try:
        assert await s.migrate() == list(range(1, latest_version() + 1))
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
    ns, private = await stores[0].create_namespace("shared")
    assert admits(await stores[3].namespace_verifier("shared"), private)
    for s in stores:
        await s.aclose()
    assert len(raw_rows(store_url, "SELECT version FROM schema_migrations")) == latest_version()


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

NODE, GW = b"node-peer", b"gateway-peer"


def proof_by(private: str, namespace: str, nonce: bytes = b"n" * 32) -> bytes:
    return keys.prove_namespace(private, nonce, namespace, NODE, GW)


def admits(verifier: NamespaceVerifier | None, private: str, nonce: bytes = b"n" * 32) -> bool:
    assert verifier is not None
    return verifier.check_proof(proof_by(private, verifier.name, nonce), nonce, NODE, GW)


async def test_namespace_lifecycle(store):
    ns, private = await store.create_namespace("team-a", owner="alice")
    assert ns.name == "team-a" and ns.owner == "alice" and ns.rotated_at is None
    assert private is not None and private.startswith("tooti-ns-key-v1:")
    public = keys.public_of(private, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
    assert [k.public_key for k in ns.keys] == [public]
    assert await store.get_namespace("team-a") == ns
    assert await store.get_namespace("nope") is None
    assert [n.name for n in await store.list_namespaces()] == ["team-a"]

    verifier = await store.namespace_verifier("team-a")
    assert verifier is not None and verifier.public_keys == (public,) and verifier.allowed_peers == ()
    assert admits(verifier, private)
    other = keys.generate(keys.NAMESPACE_PRIVATE)
    assert not admits(verifier, other)
    # bound to the namespace, the nonce, the node and the gateway
    sig = proof_by(private, "team-a", b"1" * 32)
    assert not verifier.check_proof(sig, b"2" * 32, NODE, GW)
    assert not verifier.check_proof(sig, b"1" * 32, b"other-node", GW)
    assert not verifier.check_proof(sig, b"1" * 32, NODE, b"other-gateway")
    assert not verifier.check_proof(proof_by(private, "team-b", b"1" * 32), b"1" * 32, NODE, GW)
    assert await store.namespace_verifier("other") is None

    key, new_private = await store.rotate_namespace_key("team-a")
    assert new_private is not None and new_private != private
    rotated = await store.namespace_verifier("team-a")
    assert rotated is not None and rotated.public_keys == (key.public_key,)
    assert rotated.revision != verifier.revision
    assert not admits(rotated, private) and admits(rotated, new_private)
    got = await store.get_namespace("team-a")
    assert got is not None and got.rotated_at is not None

    assert await store.delete_namespace("team-a") is True
    assert await store.delete_namespace("team-a") is False
    assert await store.namespace_verifier("team-a") is None


async def test_namespace_errors(store):
    await store.create_namespace("dup")
    with pytest.raises(AlreadyExists):
        await store.create_namespace("dup")
    with pytest.raises(ValueError):
        await store.create_namespace("bad name!")
    for bad in ("", "tooti-ns-key-v1:" + "A" * 43, "tooti-ns-pub-v1:short", "garbage"):
        with pytest.raises(ValueError):
            await store.create_namespace("ok", public_key=bad)
    assert await store.get_namespace("ok") is None
    with pytest.raises(NotFound):
        await store.rotate_namespace_key("missing")
    with pytest.raises(ValueError):
        await store.rotate_namespace_key("dup", grace=-1)
    with pytest.raises(ValueError):
        await store.rotate_namespace_key("dup", grace=10**9)
    with pytest.raises(NotFound):
        await store.set_allowed_peers("missing", ["p"])


async def test_operator_generated_public_key(store):
    private = keys.generate(keys.NAMESPACE_PRIVATE)
    public = keys.public_of(private, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
    ns, returned = await store.create_namespace("own", public_key="  " + public + "\n")
    assert returned is None and ns.keys[0].public_key == public
    assert admits(await store.namespace_verifier("own"), private)
    second = keys.generate(keys.NAMESPACE_PRIVATE)
    _, none = await store.rotate_namespace_key(
        "own", public_key=keys.public_of(second, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
    )
    assert none is None
    verifier = await store.namespace_verifier("own")
    assert admits(verifier, second) and not admits(verifier, private)


async def test_rotation_grace_keeps_the_old_key_until_it_ends(store):
    _, old = await store.create_namespace("g")
    _, new = await store.rotate_namespace_key("g", grace=600)
    ns = await store.get_namespace("g")
    assert ns is not None and len(ns.keys) == 2
    now = ns.rotated_at
    assert now is not None
    during = Store.verifier_of(ns, now + timedelta(seconds=599))
    after = Store.verifier_of(ns, now + timedelta(seconds=601))
    assert admits(during, old) and admits(during, new)
    assert not admits(after, old) and admits(after, new)
    assert during.revision != after.revision  # the grace period ending is a change
    # a second rotation without grace ends every old key at once
    _, newest = await store.rotate_namespace_key("g")
    verifier = await store.namespace_verifier("g")
    assert not admits(verifier, old) and not admits(verifier, new) and admits(verifier, newest)


async def test_allowed_peers_and_revisions(store):
    await store.create_namespace("ns", allowed_peers=["peer-a"])
    first = await store.namespace_verifier("ns")
    assert first is not None and first.allowed_peers == ("peer-a",)
    assert await store.namespace_verifier("ns") == first  # stable while nothing changes
    await store.set_allowed_peers("ns", ["peer-c", "peer-b"])
    second = await store.namespace_verifier("ns")
    assert second is not None and set(second.allowed_peers) == {"peer-b", "peer-c"}
    assert second.revision != first.revision
    ns = await store.get_namespace("ns")
    assert ns is not None and ns.allowed_peer_ids == ("peer-c", "peer-b")
    all_verifiers = await store.namespace_verifiers()
    assert all_verifiers == {"ns": second}
    # deleted and re-created under the same name: a new revision even with the same key
    public = second.public_keys[0]
    await store.delete_namespace("ns")
    await store.create_namespace("ns", public_key=public, allowed_peers=["peer-c", "peer-b"])
    third = await store.namespace_verifier("ns")
    assert third is not None and third.revision != second.revision


async def test_old_secret_rows_are_wiped_and_need_a_rotation(store_url, monkeypatch):
    """A database made by a version that stored namespace secret hashes: the migration wipes
    the hashes (they were the proof key), and such a namespace admits nobody by key until it
    is rotated; its allow-list still works."""
    from tooti.store import migrations

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    old = await open_store(store_url)
    await old.aclose()
    insert = (
        "INSERT INTO namespaces (name, secret_hash, allowed_peer_ids, owner, created_at)"
        " VALUES ('legacy', 'sha256$00ff', '[\"peer-a\"]', '', '2026-01-01T00:00:00.000000+00:00')"
    )
    exec_raw(store_url, insert)
    for n, (p, c) in enumerate([(2**63 - 1, 5), (-7, 2**62), (3, 4)]):
        exec_raw(
            store_url,
            "INSERT INTO usage (request_id, at, key_prefix, namespace, node_peer_id, model,"
            " prompt_tokens, completion_tokens, latency_ms, status, gateway_id) VALUES"
            f" ('old-{n}', '2026-01-01T00:00:00.000000+00:00', 'k', '', 'p', 'm', {p}, {c}, 1, 200, 'g')",
        )
    monkeypatch.undo()
    store = await open_store(store_url)
    try:
        assert raw_rows(store_url, "SELECT secret_hash FROM namespaces") == [("",)]
        verifier = await store.namespace_verifier("legacy")
        assert verifier is not None and verifier.public_keys == () and verifier.allowed_peers == ("peer-a",)
        _, private = await store.rotate_namespace_key("legacy")
        assert admits(await store.namespace_verifier("legacy"), private)
        [summary] = await store.usage_summary()
        assert (summary.prompt_tokens, summary.completion_tokens) == (10**9 + 3, 10**9 + 9)
        assert summary.flagged_requests == 2
    finally:
        await store.aclose()


def exec_raw(url: str, sql: str) -> None:
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


async def test_a_stolen_database_copy_admits_nobody(tmp_path, store_url):
    """Copy the SQLite files as a thief would (on PostgreSQL: read it all, as a dump would),
    read every column of every row, and try each value every way it could serve as a
    namespace credential: none verifies; only the private keys (never stored) do."""
    url = f"sqlite:///{tmp_path / 'live.db'}" if store_url.startswith("sqlite") else store_url
    store = await open_store(url)
    privates: dict[str, str] = {}
    try:
        for name in ("alpha", "beta"):
            _, private = await store.create_namespace(name, allowed_peers=["peer-x"])
            assert private is not None
            privates[name] = private
        own = keys.generate(keys.NAMESPACE_PRIVATE)
        await store.create_namespace(
            "gamma", public_key=keys.public_of(own, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
        )
        privates["gamma"] = own
        _, rotated = await store.rotate_namespace_key("beta", grace=3600)
        assert rotated is not None
        await store.create_api_key(owner="x")
        await store.record_usage([usage("r1")])
        # the thief copies while the gateway runs: database, -wal and -shm
        stolen_url = url
        if url.startswith("sqlite"):
            stolen = tmp_path / "stolen"
            stolen.mkdir()
            for f in tmp_path.iterdir():
                if f.name.startswith("live.db"):
                    shutil.copy(f, stolen / f.name)
            stolen_url = f"sqlite:///{stolen / 'live.db'}"
        verifiers = await store.namespace_verifiers()
    finally:
        await store.aclose()
    values = all_stored_values(stolen_url)
    assert {t for t, _, _ in values} >= {"namespaces", "namespace_keys", "api_keys", "usage"}
    nonce = os.urandom(32)
    for _, _, value in values:
        for private in [*privates.values(), rotated]:
            assert private not in value and private.split(":", 1)[1] not in value
        for candidate in _credential_guesses(value):
            for verifier in verifiers.values():
                try:
                    sig = keys.prove_namespace(candidate, nonce, verifier.name, NODE, GW)
                except ValueError:
                    sig = b""
                assert not verifier.check_proof(sig, nonce, NODE, GW)
                assert not verifier.check_proof(value.encode()[:64], nonce, NODE, GW)
    for name, private in privates.items():
        assert admits(verifiers[name], private, nonce)
    assert admits(verifiers["beta"], rotated, nonce)


def _credential_guesses(value: str) -> list[str]:
    """Every way a stored value could be read as a namespace private key."""
    out = [value]
    body = value.split(":", 1)[-1]
    for raw in (value.encode(), body.encode(), hashlib.sha256(value.encode()).digest()):
        out.append("tooti-ns-key-v1:" + base64.urlsafe_b64encode(raw[:32].ljust(32, b"\0")).decode())
    out.append("tooti-ns-key-v1:" + body)
    return out


async def test_sqlite_files_are_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "db" / "tooti.db"
        path.parent.mkdir(mode=0o755)
        store = await open_store(f"sqlite:///{path}")
        await store.create_namespace("x")
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert {"tooti.db", "tooti.db-wal", "tooti.db-shm"} <= set(files)
        assert all(mode == 0o600 for mode in files.values()), files
        await store.aclose()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755  # directory left as it was
        # files made world-readable by someone else are tightened on the next open
        for p in path.parent.iterdir():
            p.chmod(0o644)
        store = await open_store(f"sqlite:///{path}")
        await store.ping()
        assert {stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()} == {0o600}
        await store.aclose()
    finally:
        os.umask(old)


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
    _, rotated = await store.rotate_namespace_key("gen", grace=60)
    _, key = await store.create_api_key(owner="x")
    key_secret = KEY_RE.match(key).group(2)  # type: ignore[union-attr]
    needles = [generated, generated.split(":")[1], rotated, rotated.split(":")[1], key, key_secret]
    values = all_stored_values(store_url)
    assert {t for t, _, _ in values} >= {"namespaces", "namespace_keys", "api_keys", "schema_migrations"}
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


# -- hostile usage values ------------------------------------------------------------


def test_normalise_cleans_text_and_clamps_figures():
    raw = UsageRow(
        "req\x00-1",
        T0,
        "k\x1b[31m",
        "ns",
        "peer",
        "evil\x00model\ud800\x9b" + "x" * 1000,
        10**12,
        -5,
        float("nan"),  # type: ignore[arg-type]
        1000,
        "gw",
        client_request_id="\r\nX-Injected: 1",
        usage_source="made-up",
        flags=["Client Disconnected", "x" * 100, "client_disconnected"],
    )
    row = normalise(raw)
    assert row.request_id == "req-1" and row.key_prefix == "k[31m"
    assert row.model.startswith("evilmodel") and len(row.model) == 256
    assert row.client_request_id == "X-Injected: 1"
    assert (row.prompt_tokens, row.completion_tokens) == (MAX_TOKENS, 0)
    assert row.latency_ms == 0 and row.status == 0 and row.usage_source == "estimated"
    flags = row.flags.split(",")
    assert {"usage_clamped", "text_normalised", "value_invalid", "client_disconnected"} <= set(flags)
    assert all(len(f) <= 48 for f in flags)
    assert normalise(row) == row  # idempotent
    clean = usage("fine")
    assert normalise(clean) == clean  # a sane row is left alone
    assert normalise(usage("")).request_id.startswith("gen_")
    for claim in (2**63 - 1, 2**64, 10**12, -(2**63), "12", True, None, 1.5):
        got = normalise(dataclasses.replace(clean, completion_tokens=claim)).completion_tokens  # type: ignore[arg-type]
        assert 0 <= got <= MAX_TOKENS


async def test_hostile_rows_never_jam_the_store(store):
    """NUL and surrogates in every text field, absurd figures: each row is stored cleaned and
    flagged, on both engines (PostgreSQL refuses NUL in text), and the sums stay exact."""
    bad = [
        dataclasses.replace(
            usage(f"bad-{i}"),
            model="m\x00odel",
            namespace="n\x00s\udc80",
            key_prefix="k1",
            prompt_tokens=claim,
            completion_tokens=claim,
        )
        for i, claim in enumerate((2**63 - 1, 10**12, -1, 2**63 - 1))
    ]
    await store.record_usage([usage("ok-1"), *bad, usage("ok-2")])
    assert await store.count_usage() == 6
    summary = {s.model: s for s in await store.usage_summary()}
    assert summary["model"].prompt_tokens == 3 * MAX_TOKENS and summary["model"].flagged_requests == 4
    assert summary["m1"].prompt_tokens == 20 and summary["m1"].flagged_requests == 0


async def test_summaries_survive_rows_written_by_someone_else(store, store_url):
    # Rows a careless writer (an older gateway sharing the database) put there directly.
    for n in range(3):
        exec_raw(
            store_url,
            "INSERT INTO usage (request_id, at, key_prefix, namespace, node_peer_id, model,"
            " prompt_tokens, completion_tokens, latency_ms, status, gateway_id) VALUES"
            f" ('raw-{n}', '2026-03-01T00:00:00.000000+00:00', 'k', '', 'p', 'm',"
            f" {2**63 - 1}, {-(2**63)}, 1, 200, 'g')",
        )
    [summary] = await store.usage_summary()
    assert (summary.requests, summary.prompt_tokens, summary.completion_tokens) == (3, 3 * MAX_TOKENS, 0)


async def test_dead_letters_keep_the_row(store, store_url):
    row = dataclasses.replace(usage("dead\x00-1"), model="m\x00")
    await store.record_dead_letters([(row, "DataError: \x00 in text"), (row, "again")])
    assert await store.count_dead_letters() == 1
    [(rid, payload, error)] = raw_rows(store_url, "SELECT request_id, payload, error FROM usage_dead_letter")
    assert rid == "dead-1" and json.loads(str(payload))["model"] == "m\x00" and "\x00" not in str(error)
    assert await store.count_usage() == 0
