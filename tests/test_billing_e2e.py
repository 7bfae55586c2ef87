"""Billing what was delivered, through real processes (keys mode, SQLite ledger).

The ledger's key is the gateway's own request id: a client's X-Request-ID is echoed, never
used to merge rows. A client that hangs up is billed the completion tokens it was sent
(one content delta ≈ one token; see gateway/http/billing.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("billing")
    path = tmp / "ledger.db"
    db = f"sqlite:///{path}"
    _procs.admin(db, "db", "migrate")
    key = _procs.admin(db, "apikey", "create", "--owner", "alice")
    up, up_url = _procs.start_backend("tests.standins.openai_upstream", tmp / "up.log", "--model", "fake")
    gw = _procs.start_gateway(tmp, auth="keys", database_url=db)
    node = _procs.start_node(tmp, "n", gateways=[gw], backend={"type": "openai", "base_url": up_url})
    headers = {"Authorization": f"Bearer {key}"}
    wait_for_models(gw.base_url, {"fake"}, headers=headers)
    yield {"gw": gw, "headers": headers, "db": path}
    for p in (node.proc, gw.proc, up):
        p.stop()


def _rows(path, where: str = "") -> list[tuple]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT request_id, completion_tokens, status FROM usage {where}").fetchall()


def _wait_rows(path, n: int) -> list[tuple]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while len(rows := _rows(path)) < n:
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
    return rows


def test_a_reused_client_request_id_is_billed_every_time(world: dict) -> None:
    before = len(_rows(world["db"]))
    for _ in range(5):
        r = httpx.post(
            world["gw"].base_url + "/chat/completions",
            headers={**world["headers"], "X-Request-ID": "same-id"},
            json={"model": "fake", "messages": [{"role": "user", "content": "a b"}]},
            trust_env=False,
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "same-id"
        assert r.headers["x-tooti-request-id"].startswith("req_")
    rows = _wait_rows(world["db"], before + 5)
    assert len({row[0] for row in rows}) == len(rows)  # five rows, five gateway ids


def test_a_client_that_hangs_up_pays_for_what_it_was_sent(world: dict) -> None:
    before = len(_rows(world["db"]))
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "x_fake": {"tokens": 3001, "delay_ms": 2},
    }
    read = 0
    with httpx.stream(
        "POST",
        world["gw"].base_url + "/chat/completions",
        headers=world["headers"],
        json=body,
        timeout=60,
        trust_env=False,
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"tok' in line:
                read += 1
                if read == 2900:
                    break
    rows = _wait_rows(world["db"], before + 1)
    _, completion, status = rows[-1]
    assert status == 499
    # Billed what the gateway relayed: the 2,900 read plus what was in flight when the client
    # left (a few ms of tokens at 2 ms each).
    assert 2900 <= completion <= 2960, completion
