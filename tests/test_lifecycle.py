"""Process lifecycles: a gateway that goes away and comes back, `tooti up` and Ctrl-C, allow-lists."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx
import openai

from harness import procs as _procs
from tests.conftest import wait_for_models


def test_node_rejoins_a_restarted_gateway(tmp_path: Path) -> None:
    up, url = _procs.start_backend(
        "tests.standins.openai_upstream", tmp_path / "up.log", "--model", "fake", "--model", "hidden"
    )
    gw = _procs.start_gateway(tmp_path, auth="open")
    node = _procs.start_node(
        tmp_path,
        "n",
        gateways=[gw],
        backend={"type": "openai", "base_url": url},
        extra={"models": {"allow": ["fake"]}},
    )
    try:
        seen = wait_for_models(gw.base_url, {"fake"})
        assert "hidden" not in seen  # the allow-list holds
        gw.proc.kill()
        # same key file, same addresses: the node's backoff loop finds it again
        again = _procs.tooti(
            ["gateway", "start", "-file", str(gw.config)], log=tmp_path / "gw" / "gateway2.log"
        )
        again.wait_line("tooti gateway ready:")
        wait_for_models(gw.base_url, {"fake"}, timeout=30)
        out = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0).chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "back"}]
        )
        assert out.choices[0].message.content
        assert node.proc.popen.poll() is None
        again.stop()
    finally:
        node.proc.stop()
        up.stop()


def test_tooti_up_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port, p2p = _procs.free_port(), _procs.free_port()
    proc = _procs.Proc(
        [
            sys.executable,
            "-m",
            "tooti",
            "up",
            "--backend",
            "loopback",
            "--port",
            str(port),
            "--p2p-port",
            str(p2p),
            "--data-dir",
            str(tmp_path / "home"),
        ],
        log=tmp_path / "up.log",
    )
    try:
        proc.wait_line("  base URL: http://127.0.0.1:")
        base = f"http://127.0.0.1:{port}/v1"
        assert "loopback" in {m["id"] for m in httpx.get(base + "/models", trust_env=False).json()["data"]}
        out = openai.OpenAI(base_url=base, api_key="dev", max_retries=0).chat.completions.create(
            model="loopback", messages=[{"role": "user", "content": "echo me"}]
        )
        assert out.choices[0].message.content == "echo me"
        assert "OPEN DEVELOPMENT MODE" in proc.log.read_text()
        proc.signal(signal.SIGINT)
        assert proc.popen.wait(15) == 0
        assert "Traceback" not in proc.log.read_text()
    finally:
        if proc.popen.poll() is None:
            proc.kill()


def test_deadlines_give_504_and_a_terminated_stream(tmp_path: Path) -> None:
    up, url = _procs.start_backend("tests.standins.openai_upstream", tmp_path / "up.log", "--model", "slow")
    gw = _procs.start_gateway(
        tmp_path, auth="open", extra={"timeouts": {"first_token_sec": 1, "total_sec": 5}}
    )
    node = _procs.start_node(tmp_path, "n", gateways=[gw], backend={"type": "openai", "base_url": url})
    try:
        wait_for_models(gw.base_url, {"slow"})
        body = {"model": "slow", "messages": [{"role": "user", "content": "x"}], "x_fake": {"ttft_ms": 3000}}
        r = httpx.post(gw.base_url + "/chat/completions", json=body, trust_env=False, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        events = []
        with httpx.stream(
            "POST",
            gw.base_url + "/chat/completions",
            json={**body, "stream": True},
            trust_env=False,
            timeout=30,
        ) as s:
            for line in s.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]" and '"code": "timeout"' in events[-2]
        # the backend request behind the timed-out stream was cancelled, not left running
        deadline = time.monotonic() + 5
        while httpx.get(url + "/_stats", trust_env=False).json()["active"]:
            assert time.monotonic() < deadline, "backend request still running after the timeout"
            time.sleep(0.05)
        ok = httpx.post(
            gw.base_url + "/chat/completions",
            trust_env=False,
            timeout=30,
            json={"model": "slow", "messages": [{"role": "user", "content": "x"}]},
        )
        assert ok.status_code == 200
    finally:
        for p in (node.proc, gw.proc, up):
            p.stop()
