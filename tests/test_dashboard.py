"""The /ui dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright's
Python package pointed at that binary: no browser download), against a real gateway in keys
mode and real node processes. Also the admin-key rule for /metrics and the dashboard's data.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from harness import procs as _procs
from tests.conftest import require, wait_for_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("dashboard")
    db = f"sqlite:///{tmp / 'tooti.db'}"
    admin, user = _procs.admin(db, "apikey", "create"), _procs.admin(db, "apikey", "create")
    admin_prefix = admin.split("-")[1]
    gw = _procs.start_gateway(
        tmp, auth="keys", database_url=db, extra={"admin": {"key_prefixes": [admin_prefix]}}
    )
    first = _procs.start_node(tmp, "alpha", gateways=[gw], backend={"type": "loopback"})
    headers = {"Authorization": f"Bearer {user}"}
    wait_for_models(gw.base_url, {"loopback"}, headers=headers)
    yield {"gw": gw, "admin": admin, "user": user, "tmp": tmp, "first": first}
    first.proc.stop()
    gw.proc.stop()


def test_metrics_and_summary_need_an_admin_key(world: dict) -> None:
    gw = world["gw"]
    for path in ("/metrics", "/v1/admin/summary"):
        assert httpx.get(gw.http + path, trust_env=False).status_code == 401
        denied = httpx.get(
            gw.http + path, headers={"Authorization": f"Bearer {world['user']}"}, trust_env=False
        )
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "permission_denied"
        ok = httpx.get(gw.http + path, headers={"Authorization": f"Bearer {world['admin']}"}, trust_env=False)
        assert ok.status_code == 200
    # Keys mode adds the database's figures, read from the accounts at scrape time, and an
    # inference request refused at the door is counted without model or namespace.
    denied = httpx.post(gw.base_url + "/chat/completions", json={"model": "loopback"}, trust_env=False)
    assert denied.status_code == 401
    admin = {"Authorization": f"Bearer {world['admin']}"}
    text = httpx.get(gw.http + "/metrics", headers=admin, trust_env=False).text
    for line in (
        "tooti_gateway_database_up 1.0",
        'tooti_gateway_requests_total{model="",namespace="",route="chat",status="401"} 1.0',
        'tooti_gateway_store_latency_seconds_count{op="verify_api_key"}',
        "tooti_gateway_usage_rows_pending",
        'tooti_gateway_usage_rows_total{outcome="written"}',
    ):
        assert line in text, line
    # The page itself holds no data and is served to anyone, with a strict CSP.
    page = httpx.get(gw.http + "/ui", trust_env=False)
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(gw.http + "/ui/../app.py", trust_env=False).status_code == 404
    assert httpx.get(gw.http + "/ui/nope.js", trust_env=False).status_code == 404


def _count(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all(selector, "els => els.length")


def test_dashboard_shows_the_network_live(world: dict, tmp_path: Path) -> None:
    require(os.path.exists(CHROMIUM), "Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright Python package is not installed")
        raise
    gw = world["gw"]
    client = openai.OpenAI(base_url=gw.base_url, api_key=world["user"], max_retries=0)
    for i in range(3):
        client.chat.completions.create(model="loopback", messages=[{"role": "user", "content": f"hello {i}"}])

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(gw.http + "/ui")
            # Keys mode: the page asks for the admin key before it shows anything.
            page.wait_for_selector("#key-form:not([hidden])", timeout=20_000)
            # The 401 of the first data request is logged by the browser itself; that is the
            # expected challenge, not a page error.
            errors.clear()
            page.fill("#key-input", world["admin"])
            page.click("#key-form button")
            page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=20_000)
            page.wait_for_selector("#nodes-body tr[data-peer]", timeout=20_000)
            assert _count(page, "#nodes-body tr[data-peer]") == 1
            assert world["first"].peer_id in page.inner_html("#nodes-body")
            assert "alpha" in page.inner_text("#nodes-body")

            # A node joins: the table grows without a reload.
            second = _procs.start_node(world["tmp"], "beta", gateways=[gw], backend={"type": "loopback"})
            try:
                page.wait_for_function(
                    "() => document.querySelectorAll('#nodes-body tr[data-peer]').length === 2",
                    timeout=30_000,
                )
                assert "beta" in page.inner_text("#nodes-body")
                # Traffic shows up as rates and in the last hour's usage.
                for i in range(5):
                    client.chat.completions.create(
                        model="loopback", messages=[{"role": "user", "content": f"more {i}"}]
                    )
                page.wait_for_function(
                    "() => document.querySelectorAll('#recent-body svg.spark polyline').length >= 1",
                    timeout=20_000,
                )
                # A node is killed: its connection closes and it leaves the table.
                world["first"].proc.kill()
                page.wait_for_function(
                    "() => document.querySelectorAll('#nodes-body tr[data-peer]').length === 1",
                    timeout=30_000,
                )
                assert "alpha" not in page.inner_text("#nodes-body")
                assert page.inner_text("#nodes-live") == "1"
                # Live traffic while the picture is taken, so the rates show it.
                stop = threading.Event()

                def traffic() -> None:
                    while not stop.is_set():
                        client.chat.completions.create(
                            model="loopback",
                            messages=[{"role": "user", "content": "a steady stream of words"}],
                        )

                sender = threading.Thread(target=traffic)
                sender.start()
                try:
                    page.wait_for_function(
                        "() => !['0', '–'].includes(document.getElementById('req-rate').textContent)",
                        timeout=20_000,
                    )
                    page.wait_for_timeout(4500)  # two more refreshes: the sparklines rise
                    shot = tmp_path / "dashboard.png"
                    page.screenshot(path=str(shot), full_page=True)
                finally:
                    stop.set()
                    sender.join(30)
            finally:
                second.proc.stop()
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    stable = ARTIFACTS / "dashboard.png"
    shutil.copy(shot, stable)
    print(f"dashboard screenshot: {stable} (and {shot})")
    assert errors == [], errors
