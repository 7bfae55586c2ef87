"""The usage ledger through a real gateway process on a private PostgreSQL cluster that the
test restarts under load: every request answered is billed exactly once, a clean shutdown
flushes what is waiting, and /v1/usage survives rows no gateway would write.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import trio

from harness import procs as _procs
from tests._pg import Cluster, raw_rows
from tests.conftest import wait_for_models


def _count(db: str) -> int:
    try:
        return int(raw_rows(db, "SELECT COUNT(*) FROM usage")[0][0])  # type: ignore[call-overload]
    except Exception:
        return -1


def _wait_count(db: str, want: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (n := _count(db)) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


@pytest.fixture
def world(pg_cluster: Cluster, tmp_path) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    db = pg_cluster.url
    _procs.admin(db, "db", "migrate")
    key = _procs.admin(db, "apikey", "create", "--owner", "ledger")
    gw = _procs.start_gateway(tmp_path, "gw", auth="keys", database_url=db)
    node = _procs.start_node(
        tmp_path, "node", gateways=[gw], backend={"type": "loopback"}, node={"max_concurrency": 32}
    )
    headers = {"Authorization": f"Bearer {key}"}
    wait_for_models(gw.base_url, {"loopback"}, headers=headers)
    yield {"db": db, "gw": gw, "node": node, "key": key, "headers": headers, "cluster": pg_cluster}
    node.proc.stop()
    gw.proc.stop()


def test_thousand_requests_across_a_postgres_restart(world: dict) -> None:
    gw, db, cluster = world["gw"], world["db"], world["cluster"]
    done = 0
    restarted = trio.Event()
    window: list[int] = []  # requests answered while the database was down

    async def run() -> None:
        nonlocal done
        async with httpx.AsyncClient(
            base_url=gw.base_url, trust_env=False, timeout=60, headers=world["headers"]
        ) as client:
            # the key is verified (and cached) before the database goes away
            assert (await client.get("/models")).status_code == 200
            sem = trio.Semaphore(16)

            async def one(i: int) -> None:
                nonlocal done
                async with sem:
                    r = await client.post(
                        "/chat/completions",
                        json={
                            "model": "loopback",
                            "stream": i % 2 == 1,
                            "messages": [{"role": "user", "content": f"req {i}"}],
                        },
                    )
                    assert r.status_code == 200, r.text
                    done += 1

            async def restart_midway() -> None:
                while done < 300:
                    await trio.sleep(0.01)
                # down longer than the pool waits for a connection (3 s): batch writes fail and are retried
                await trio.to_thread.run_sync(cluster.stop)
                down_at = done
                await trio.sleep(4.5)
                window.append(done - down_at)
                await trio.to_thread.run_sync(cluster.start)
                restarted.set()

            async with trio.open_nursery() as n:
                n.start_soon(restart_midway)
                for i in range(1000):
                    n.start_soon(one, i)

    started = time.monotonic()
    trio.run(run)
    assert restarted.is_set() and done == 1000
    assert _wait_count(db, 1000) == 1000, "ledger lost or duplicated rows across the restart"
    print(
        f"1000 requests with a PostgreSQL restart: {time.monotonic() - started:.1f}s,"
        f" {window[0]} answered while the database was down"
    )
    log = gw.proc.log.read_text()
    assert window[0] > 0 and "database unavailable" in log
    assert "Traceback" not in log
    # every row carries its own gateway request id, and the counts are sane
    [(distinct, bad)] = raw_rows(
        db,
        "SELECT COUNT(DISTINCT request_id),"
        " SUM(CASE WHEN prompt_tokens < 0 OR completion_tokens < 0 THEN 1 ELSE 0 END) FROM usage",
    )
    assert distinct == 1000 and bad == 0

    # a clean shutdown (SIGTERM) right after the last answer writes the rows still waiting
    with httpx.Client(base_url=gw.base_url, trust_env=False, timeout=30, headers=world["headers"]) as c:
        for i in range(40):
            body = {"model": "loopback", "messages": [{"role": "user", "content": f"last {i}"}]}
            assert c.post("/chat/completions", json=body).status_code == 200
    gw.proc.popen.send_signal(signal.SIGTERM)
    assert gw.proc.popen.wait(30) == 0
    assert _count(db) == 1040


def test_usage_endpoint_survives_hostile_rows(world: dict) -> None:
    """Rows as an older or broken writer could leave them: int64 extremes, escape codes. The
    summary stays a 200 with bounded, exact figures."""
    db = world["db"]
    prefix = world["key"].split("-")[1]
    for n, (p, c) in enumerate([(2**63 - 1, 2**63 - 1), (-(2**63), 5), (2**63 - 1, 0)]):
        raw_rows(
            db,
            "INSERT INTO usage (request_id, at, key_prefix, namespace, node_peer_id, model,"
            " prompt_tokens, completion_tokens, latency_ms, status, gateway_id) VALUES"
            f" ('hostile-{n}', now(), '{prefix}', '', 'p', E'm\\x1b[2J', {p}, {c}, 1, 200, 'g') RETURNING 1",
        )
    r = httpx.get(world["gw"].base_url + "/usage", headers=world["headers"], trust_env=False, timeout=30)
    assert r.status_code == 200, r.text
    [row] = [u for u in r.json()["data"] if u["model"] == "m\x1b[2J"]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (3, 2 * 10**9, 10**9 + 5)
    assert row["total_tokens"] == 3 * 10**9 + 5
