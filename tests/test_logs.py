"""Logs fit for days: an outage is a few lines, not one per failed request; JSON lines carry the
request's fields and never a secret; the summarising helpers on their own clock.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import libp2p  # noqa: F401 - imported first, as in the real processes: it reconfigures logging

from harness import procs as _procs
from tests.conftest import wait_for_models
from tooti import logs
from tooti._logsummary import Outages, RepeatFilter

# The bound asserted below for a 5 s backend outage under load, over the gateway's and the
# node's logs together (every line, any level), while the test made >= 100 failing requests.
OUTAGE_LINE_BOUND = 25


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_outages_log_start_progress_and_end() -> None:
    clock, out = _Clock(), io.StringIO()
    logger = logging.getLogger("test.outages")
    logger.propagate = False
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    try:
        outages = Outages(logger, "node", quiet=30, report_every=60, clock=clock)
        for _ in range(500):  # 500 failures over 100 s
            outages.failure("n1", "backend error 502")
            clock.now += 0.2
        outages.success("n1")
        outages.success("n1")  # nothing open: nothing logged
        outages.failure("n2")
        clock.now += 31
        outages.sweep()
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0] == "node n1 failing: backend error 502"
    assert lines[1].startswith("node n1 still failing: 300 failures in the last 60s")
    assert lines[2].startswith("node n1 outage ended (recovered): 500 failed over 99.8s")
    assert lines[3] == "node n2 failing: request failed"
    assert lines[4].startswith("node n2 outage ended (no failures for 31s): 1 failed")
    assert len(lines) == 5


def test_repeat_filter_collapses_a_template() -> None:
    clock, out = _Clock(), io.StringIO()
    logger = logging.getLogger("test.repeats")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(out)
    repeats = RepeatFilter(burst=3, quiet=10, report_every=60, clock=clock)
    repeats.bind(handler.handle)
    handler.addFilter(repeats)
    logger.addHandler(handler)
    try:
        for i in range(1000):
            logger.warning("request %s: backend error: %s", f"r{i}", "connection refused")
            if i < 2:
                logger.info("info lines pass %d", i)  # below the filter's level: untouched
            clock.now += 0.005
        clock.now += 11
        repeats.flush()
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["request r0: backend error: connection refused", "info lines pass 0"]
    assert len(lines) == 3 + 2 + 1
    assert lines[-1].startswith(
        "repeated 997 more times over 5.0s (ended); last: request r999: backend error"
    )


def test_json_format_fields_and_no_secrets() -> None:
    out = io.StringIO()
    handler = logs.setup("INFO", "json", stream=out)
    try:
        log = logging.getLogger("tooti.access")
        log.setLevel(logging.INFO)
        secret_key = "tt-abc123-S3CRETsecretSECRETsecret"
        log.info(
            "chat m via peer: 200 in 12 ms",
            extra={
                "request_id": "req_1",
                "key": "abc123",
                "node": "peer",
                "model": "m",
                "status": 200,
                "latency_ms": 12,
            },
        )
        logging.getLogger("tooti.gateway").warning("client sent Authorization: Bearer %s", secret_key)
        logging.getLogger("tooti.store").warning("cannot reach postgresql://tooti:hunter2@db/tooti")
        logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: all attempts failed")
        logging.getLogger("libp2p.host.basic_host").warning(
            "Failed to open stream to peer %s:\n  Error: protocols not supported: tried %s",
            "12D3Koo",
            ["/meshsub/1.2.0"],
        )
        logging.getLogger("libp2p.pubsub").error("something libp2p thinks is an error")
        try:
            raise ValueError(f"boom {secret_key}")
        except ValueError:
            logging.getLogger("tooti.node").exception("unexpected")
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert "S3CRET" not in text and "hunter2" not in text
    records = [json.loads(line) for line in text.splitlines()]
    access = records[0]
    assert {k: access[k] for k in ("level", "logger", "msg", "request_id", "key", "node", "model")} == {
        "level": "INFO",
        "logger": "tooti.access",
        "msg": "chat m via peer: 200 in 12 ms",
        "request_id": "req_1",
        "key": "abc123",
        "node": "peer",
        "model": "m",
    }
    assert access["status"] == 200 and access["latency_ms"] == 12 and access["ts"].endswith("+00:00")
    assert records[1]["msg"] == "client sent Authorization: Bearer ***"
    assert records[2]["msg"] == "cannot reach postgresql://tooti:***@db/tooti"
    # The expected redial's ERROR is gone (DEBUG); other libp2p ERRORs are WARNINGs.
    assert [r["level"] for r in records[3:5]] == ["WARNING", "ERROR"]
    assert records[3]["logger"] == "libp2p.pubsub"
    assert "tt-abc123-***" in records[4]["exc"]


def _upstream_on(port: int, log: Path) -> _procs.Proc:
    proc = _procs.Proc(
        [sys.executable, "-m", "tests.standins.openai_upstream", "--port", str(port), "--model", "m"], log=log
    )
    proc.wait_line("ready", timeout=60)
    return proc


def test_backend_outage_under_load_logs_a_bounded_number_of_lines(tmp_path: Path) -> None:
    port = _procs.free_port()
    up = _upstream_on(port, tmp_path / "up1.log")
    gw = _procs.start_gateway(tmp_path, auth="open")
    node = _procs.start_node(
        tmp_path,
        "n",
        gateways=[gw],
        backend={"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1"},
        extra={"models": {"refresh_sec": 1}},
    )
    wait_for_models(gw.base_url, {"m"})
    stop = threading.Event()
    outcomes: list[int] = []

    def load() -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(
                        gw.base_url + "/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                    )
                    outcomes.append(r.status_code)
                except httpx.HTTPError:
                    outcomes.append(0)

    logs_before = {p: len(p.read_text().splitlines()) for p in (gw.proc.log, node.proc.log)}
    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(1)
        up.stop()  # the backend goes away for 5 s under load
        time.sleep(5)
        up = _upstream_on(port, tmp_path / "up2.log")
        wait_for_models(gw.base_url, {"m"}, timeout=20)
        time.sleep(1)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    failed = sum(1 for s in outcomes if s != 200)
    assert failed >= 100, f"the outage failed only {failed} requests; the load was too light to show anything"
    assert outcomes[-1] == 200
    # Let every episode end and be summarised (quiet 10 s, flushed every second).
    time.sleep(12)
    new_lines: list[str] = []
    for p, n in logs_before.items():
        new_lines += p.read_text().splitlines()[n:]
    node.proc.stop()
    gw.proc.stop()
    up.stop()
    shown = "\n".join(new_lines)
    print(f"{failed} failed requests, {len(new_lines)} log lines:\n{shown}")
    assert len(new_lines) <= OUTAGE_LINE_BOUND, shown
    assert not [line for line in new_lines if " ERROR " in line], shown
    assert "more times over" in shown  # how many failed is said once, at the end
    assert "outage ended" in shown


def test_sigterm_and_ctrl_c_log_no_exception_groups(tmp_path: Path) -> None:
    gw = _procs.start_gateway(tmp_path, auth="open")
    node = _procs.start_node(tmp_path, "n", gateways=[gw], backend={"type": "loopback"})
    wait_for_models(gw.base_url, {"loopback"})
    with httpx.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "loopback", "messages": [{"role": "user", "content": "x"}], "stream": True},
        trust_env=False,
        timeout=30,
    ) as r:
        assert r.status_code == 200
        node.proc.signal(signal.SIGINT)  # Ctrl-C
        assert gw.proc.stop() == 0  # SIGTERM
    assert node.proc.popen.wait(15) == 0
    node.proc.stop()
    for p in (gw.proc.log, node.proc.log):
        text = p.read_text()
        assert "ExceptionGroup" not in text and "Traceback" not in text, text
        assert " ERROR " not in text, text


def test_summary_state_is_bounded() -> None:
    clock, out = _Clock(), io.StringIO()
    logger = logging.getLogger("test.bounded")
    logger.propagate = False
    handler = logging.StreamHandler(out)
    repeats = RepeatFilter(burst=1, quiet=10, clock=clock, max_templates=5)
    repeats.bind(handler.handle)
    handler.addFilter(repeats)
    logger.addHandler(handler)
    outages = Outages(logger, "node", clock=clock, max_subjects=3)
    try:
        for t in range(8):  # 8 templates, 5 tracked: the rest pass through uncollapsed
            for _ in range(4):
                logger.warning(f"template {t} %s", "x")
        for n in range(5):  # 5 failing subjects, 3 tracked
            outages.failure(f"n{n}")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("template ") for line in lines) == 5 * 1 + 3 * 4
    assert len(repeats._held) == 5
    assert outages.open_subjects() == ["n0", "n1", "n2"]
