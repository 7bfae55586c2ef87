"""Accounts through real processes on one real PostgreSQL: two gateways, namespaces proven on
the wire by signature with namespace keys (the database holds public keys only), scoped API keys, revocation on every gateway, the usage ledger, a database outage.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
import trio

from harness import procs as _procs
from tests._pg import Cluster, private_cluster, raw_rows
from tests.conftest import logs_text, wait_for_models


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A private server: the outage test stops it, which must not disturb anything else.
    with private_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def pg_db(cluster: Cluster) -> str:
    return cluster.url


@pytest.fixture(scope="module")
def world(pg_db: str, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("accounts")
    _procs.admin(pg_db, "db", "migrate")
    acme_key_text = _procs.admin(pg_db, "namespace", "create", "acme", "--owner", "acme-corp")
    beta_key_text = _procs.admin(pg_db, "namespace", "create", "beta")
    acme_key = _procs.admin(pg_db, "apikey", "create", "--owner", "alice", "--namespace", "acme")
    any_key = _procs.admin(pg_db, "apikey", "create", "--owner", "bob")
    gw1 = _procs.start_gateway(tmp, "gw1", auth="keys", database_url=pg_db)
    gw2 = _procs.start_gateway(tmp, "gw2", auth="keys", database_url=pg_db, bootstrap=[gw1.p2p])
    env_acme = {"ACME_NS_KEY": acme_key_text}
    nodes = [
        _procs.start_node(
            tmp,
            "acme-node",
            gateways=[gw1],
            backend={"type": "loopback"},
            node={"namespace": "acme", "namespace_key": "${ACME_NS_KEY}", "max_concurrency": 32},
            env=env_acme,
        ),
        _procs.start_node(
            tmp,
            "beta-node",
            gateways=[gw1],
            backend={"type": "loopback"},
            node={"namespace": "beta", "namespace_key": beta_key_text},
        ),
    ]
    headers = {"Authorization": f"Bearer {any_key}"}
    for gw in (gw1, gw2):
        wait_for_models(gw.base_url, {"acme:loopback", "beta:loopback"}, headers=headers)
    yield {
        "db": pg_db,
        "cluster": cluster,
        "tmp": tmp,
        "gws": [gw1, gw2],
        "nodes": nodes,
        "acme_key_text": acme_key_text,
        "beta_key_text": beta_key_text,
        "acme_key": acme_key,
        "any_key": any_key,
    }
    for p in [*(n.proc for n in nodes), gw2.proc, gw1.proc]:
        p.stop()


def _chat(
    gw: _procs.Gateway, key: str | None, model: str, *, request_id: str | None = None, **kw
) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    return httpx.post(
        gw.base_url + "/chat/completions",
        headers=headers,
        trust_env=False,
        timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": "a b c"}], **kw},
    )


def test_key_works_on_both_gateways(world: dict) -> None:
    for gw in world["gws"]:
        client = openai.OpenAI(base_url=gw.base_url, api_key=world["acme_key"], max_retries=0)
        out = client.chat.completions.create(
            model="acme:loopback", messages=[{"role": "user", "content": "hi there"}]
        )
        assert out.choices[0].message.content == "hi there"
        # x-api-key works too
        r = httpx.get(gw.base_url + "/models", headers={"x-api-key": world["any_key"]}, trust_env=False)
        assert r.status_code == 200


def test_missing_and_unknown_keys_are_401(world: dict) -> None:
    gw = world["gws"][0]
    for key in (None, "tt-nosuchkey0-" + "x" * 43, "garbage"):
        r = _chat(gw, key, "acme:loopback")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="tt-bad-key", max_retries=0).models.list()


def test_scoped_key_gets_403_on_other_namespace(world: dict) -> None:
    for gw in world["gws"]:
        r = _chat(gw, world["acme_key"], "beta:loopback")
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        assert _chat(gw, world["any_key"], "beta:loopback").status_code == 200


def test_wrong_key_serves_nothing(world: dict) -> None:
    gw1 = world["gws"][0]
    bad = _procs.start_node(
        world["tmp"],
        "impostor",
        gateways=[gw1],
        backend={"type": "loopback"},
        node={"namespace": "acme", "namespace_key": "definitely-wrong-secret"},
        wait=False,
    )
    assert bad.proc.popen.wait(30) == 1  # not even a key: the config is refused at start
    assert "node.namespace_key" in bad.proc.log.read_text()
    assert "definitely-wrong-secret" not in bad.proc.log.read_text()
    # a well-formed namespace key, just not acme's (beta's): refused too
    wrong = _procs.start_node(
        world["tmp"],
        "wrong-key",
        gateways=[gw1],
        backend={"type": "loopback"},
        node={"namespace": "acme", "namespace_key": world["beta_key_text"]},
        wait=False,
    )
    assert wrong.proc.popen.wait(30) == 3
    nodes = httpx.get(
        gw1.http + "/v1/network/nodes",
        headers={"Authorization": f"Bearer {world['any_key']}"},
        trust_env=False,
    ).json()["data"]
    assert {n["name"] for n in nodes} == {"acme-node", "beta-node"}
    # claiming a namespace that another node proved, without its key, is refused the same way
    thief = _procs.start_node(
        world["tmp"],
        "thief",
        gateways=[gw1],
        backend={"type": "loopback"},
        node={"namespace": "beta"},
        wait=False,
    )
    assert thief.proc.popen.wait(30) == 3
    assert "definitely-wrong-secret" not in logs_text(world["tmp"])


def test_ledger_matches_what_clients_saw(world: dict) -> None:
    gw = world["gws"][1]
    client = openai.OpenAI(base_url=gw.base_url, api_key=world["acme_key"], max_retries=0)
    seen = []
    out = client.chat.completions.with_raw_response.create(
        model="acme:loopback", messages=[{"role": "user", "content": "one two three four"}]
    )
    seen.append(
        (
            out.headers["x-tooti-request-id"],
            out.parse().usage.prompt_tokens,
            out.parse().usage.completion_tokens,
        )
    )
    # a streamed request whose client did NOT ask for usage: the ledger still gets exact counts
    with client.chat.completions.with_streaming_response.create(
        model="acme:loopback", messages=[{"role": "user", "content": "five six seven"}], stream=True
    ) as s:
        rid = s.headers["x-tooti-request-id"]
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert all(c["choices"] for c in chunks)  # no usage chunk was forced on the client
    seen.append((rid, 3, 3))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = {}
        for r in raw_rows(
            world["db"],
            "SELECT request_id, client_request_id, prompt_tokens, completion_tokens, namespace, model, status"
            " FROM usage",
        ):
            # the id the client saw is the gateway's (request_id) or its own (client_request_id)
            rows[r[0]] = rows[r[1]] = r[2:]
        if all(rid in rows for rid, _, _ in seen):
            break
        time.sleep(0.1)
    for rid, p, c in seen:
        assert rows[rid][:2] == (p, c)
        assert rows[rid][2] == "acme" and rows[rid][4] == 200
    usage = httpx.get(
        gw.base_url + "/usage", headers={"Authorization": f"Bearer {world['acme_key']}"}, trust_env=False
    ).json()["data"]
    assert sum(u["requests"] for u in usage) >= 2


def test_thousand_requests_thousand_rows(world: dict) -> None:
    gw = world["gws"][0]
    before = raw_rows(world["db"], "SELECT COUNT(*) FROM usage")[0][0]

    async def run() -> None:
        async with httpx.AsyncClient(
            base_url=gw.base_url,
            trust_env=False,
            timeout=30,
            headers={"Authorization": f"Bearer {world['any_key']}"},
        ) as client:
            sem = trio.Semaphore(16)

            async def one(i: int) -> None:
                async with sem:
                    r = await client.post(
                        "/chat/completions",
                        json={
                            "model": "acme:loopback",
                            "stream": i % 2 == 1,
                            "messages": [{"role": "user", "content": f"req {i}"}],
                        },
                    )
                    assert r.status_code == 200

            async with trio.open_nursery() as n:
                for i in range(1000):
                    n.start_soon(one, i)

    trio.run(run)
    deadline = time.monotonic() + 20
    while raw_rows(world["db"], "SELECT COUNT(*) FROM usage")[0][0] < before + 1000:
        assert time.monotonic() < deadline, "ledger did not catch up"
        time.sleep(0.1)
    assert raw_rows(world["db"], "SELECT COUNT(*) FROM usage")[0][0] == before + 1000


def test_revocation_reaches_every_gateway_within_5s(world: dict) -> None:
    key = _procs.admin(world["db"], "apikey", "create", "--owner", "carol")
    prefix = key.split("-")[1]
    for gw in world["gws"]:
        assert _chat(gw, key, "acme:loopback").status_code == 200
    _procs.admin(world["db"], "apikey", "revoke", prefix)
    revoked_at = time.monotonic()
    pending = set(range(len(world["gws"])))
    while pending:
        for i in list(pending):
            if _chat(world["gws"][i], key, "acme:loopback").status_code == 401:
                pending.discard(i)
        assert time.monotonic() - revoked_at < 5.0, "revocation not seen within 5 s"
        time.sleep(0.05)
    print(f"revocation seen by every gateway after {time.monotonic() - revoked_at:.2f}s")


def test_no_secret_in_any_log(world: dict) -> None:
    text = logs_text(world["tmp"])
    for secret in (world["acme_key_text"], world["beta_key_text"]):  # tooti-ns-key-v1:<key>
        assert secret not in text
        assert secret.split(":", 1)[1] not in text  # nor the key without its kind
    for secret in (world["acme_key"], world["any_key"]):  # tt-<public prefix>-<secret>
        assert secret not in text
        assert secret.split("-", 2)[2] not in text


def test_database_outage_under_load(world: dict) -> None:
    """PostgreSQL stopped for a few seconds: cached keys keep serving, /healthz and the log say
    the database is down, and every usage row is written once it is back."""
    cluster = world["cluster"]
    gws = world["gws"]
    for gw in gws:  # the key is verified and cached on both gateways
        assert _chat(gw, world["any_key"], "acme:loopback").status_code == 200
    tag = f"outage-{uuid.uuid4().hex[:8]}"
    sent = 0
    ledger_ids: list[str] = []
    cluster.stop()
    try:
        degraded: set[int] = set()
        stopped_at = time.monotonic()
        # Keep it down for at least 3 s, and until both gateways have said so (at most 12 s).
        while time.monotonic() - stopped_at < 3 or (
            degraded != {0, 1} and time.monotonic() - stopped_at < 12
        ):
            for i, gw in enumerate(gws):
                r = _chat(
                    gw, world["any_key"], "acme:loopback", stream=bool(sent % 2), request_id=f"{tag}-{sent}"
                )
                assert r.status_code == 200, r.text
                ledger_ids.append(r.headers["x-tooti-request-id"])  # the ledger's key for it
                sent += 1
                health = httpx.get(gw.http + "/healthz", trust_env=False).json()
                if health["status"] == "degraded" and not health["database"]["ok"]:
                    degraded.add(i)
        assert degraded == {0, 1}, "/healthz did not report the database down"
    finally:
        cluster.start()
    for gw in gws:
        assert "database unavailable" in gw.proc.log.read_text()
    deadline = time.monotonic() + 30
    while True:
        try:
            listed = ",".join(f"'{rid}'" for rid in ledger_ids)
            count = raw_rows(world["db"], f"SELECT COUNT(*) FROM usage WHERE request_id IN ({listed})")[0][0]
        except Exception:
            count = -1
        if count == sent:
            break
        assert time.monotonic() < deadline, f"ledger did not catch up: {count} of {sent}"
        time.sleep(0.2)
    for gw in gws:
        deadline = time.monotonic() + 10
        while httpx.get(gw.http + "/healthz", trust_env=False).json()["status"] != "ok":
            assert time.monotonic() < deadline, "/healthz still degraded after the database returned"
            time.sleep(0.2)


def test_a_scoped_key_sees_and_uses_only_its_scope(world: dict) -> None:
    """One tenancy rule: a key lists exactly the nodes it may use; a plain model name goes to
    the public pool and the key's own namespaces."""
    gw = world["gws"][0]
    acme = {"Authorization": f"Bearer {world['acme_key']}"}
    models = {
        m["id"] for m in httpx.get(gw.base_url + "/models", headers=acme, trust_env=False).json()["data"]
    }
    assert "acme:loopback" in models and not any(m.startswith("beta:") for m in models)
    nodes = httpx.get(gw.base_url + "/network/nodes", headers=acme, trust_env=False).json()["data"]
    assert {n["namespace"] for n in nodes} == {"acme"}
    r = _chat(gw, world["acme_key"], "loopback")
    assert r.status_code == 200, r.text
    assert _chat(gw, world["acme_key"], "beta:loopback").status_code == 403
    every = {"Authorization": f"Bearer {world['any_key']}"}
    nodes = httpx.get(gw.base_url + "/network/nodes", headers=every, trust_env=False).json()["data"]
    assert {n["namespace"] for n in nodes} == {"acme", "beta"}


def _namespaces_on(gw: _procs.Gateway, key: str) -> set[str]:
    r = httpx.get(gw.base_url + "/network/nodes", headers={"Authorization": f"Bearer {key}"}, trust_env=False)
    return {n["namespace"] for n in r.json()["data"]}


def test_rotation_and_deletion_evict_joined_nodes_on_every_gateway(world: dict) -> None:
    """Rotating a namespace's key or deleting the namespace takes its joined nodes out of
    every gateway within seconds; with the old key they cannot come back."""
    db, tmp, gws = world["db"], world["tmp"], world["gws"]
    nodes = []
    for ns in ("gamma", "delta"):
        key_text = _procs.admin(db, "namespace", "create", ns)
        nodes.append(
            _procs.start_node(
                tmp,
                f"{ns}-node",
                gateways=[gws[0]],
                backend={"type": "loopback"},
                node={"namespace": ns, "namespace_key": key_text},
            )
        )
    try:
        for gw in gws:
            wait_for_models(
                gw.base_url,
                {"gamma:loopback", "delta:loopback"},
                headers={"Authorization": f"Bearer {world['any_key']}"},
            )
        start = time.monotonic()
        _procs.admin(db, "namespace", "rotate", "gamma")
        _procs.admin(db, "namespace", "delete", "delta")
        deadline = start + 15
        while any({"gamma", "delta"} & _namespaces_on(gw, world["any_key"]) for gw in gws):
            assert time.monotonic() < deadline, "namespace change did not evict the nodes"
            time.sleep(0.1)
        took = time.monotonic() - start
        print(f"\nrotated and deleted namespaces' nodes gone from both gateways in {took:.2f} s")
        assert took < 6
        time.sleep(2)  # they keep trying with the old key: still refused
        assert not any({"gamma", "delta"} & _namespaces_on(gw, world["any_key"]) for gw in gws)
        for n in nodes:
            assert n.proc.popen.poll() is None  # backing off, not dead: a new key may come
    finally:
        for n in nodes:
            n.proc.stop()
