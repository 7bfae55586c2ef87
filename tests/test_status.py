"""`tooti status`: --json, --watch with a clean Ctrl-C, and peer strings made terminal-safe."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import procs as _procs
from tests.conftest import wait_for_models
from tooti._sanitize import printable
from tooti.status import render

EVIL = "evil\x1b]0;pwned\x07\x1b[2J\u202ename\r\n"


def test_printable_strips_controls_escapes_and_bidi() -> None:
    assert printable(EVIL) == "evil]0;pwned[2Jname"
    assert printable("ok-name_1") == "ok-name_1"
    assert printable("x" * 300, 10) == "x" * 9 + "…"


def test_render_is_terminal_safe() -> None:
    doc = {
        "gateway": "gw\x1b[31m",
        "data": [
            {
                "peer_id": "12D3KooW\x1bXYZ",
                "name": EVIL,
                "namespace": "\x1b[1mns",
                "models": ["m\x07", *(f"x{i}" for i in range(20))],
                "in_flight": 1.5,  # a hostile gateway may send any JSON
                "capacity": "lots",
                "ttft_ms": None,
                "live": True,
                "healthy": True,
            },
            "not an object",
        ],
    }
    text = render(doc)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text
    assert "evil]0;pwned[2Jname" in text and "+13" in text and "1 node(s)" in text


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("status")
    gw = _procs.start_gateway(tmp, auth="open")
    # Gateways refuse unprintable node names at join; the table is made safe on its own too
    # (test_render_is_terminal_safe), for a gateway that does not.
    node = _procs.start_node(
        tmp, "n", gateways=[gw], backend={"type": "loopback"}, node={"name": "status-node"}
    )
    wait_for_models(gw.base_url, {"loopback"})
    yield {"gw": gw, "node": node, "tmp": tmp}
    node.proc.stop()
    gw.proc.stop()


def _status(tmp: Path, name: str, *args: str) -> _procs.Proc:
    return _procs.Proc([sys.executable, "-m", "tooti", "status", *args], log=tmp / f"{name}.log")


def test_status_table(net: dict) -> None:
    proc = _status(net["tmp"], "once", "--gateway", net["gw"].http)
    assert proc.popen.wait(30) == 0
    text = "\n".join(line for line in proc._lines if line != "\0eof")
    assert "status-node" in text and "live" in text and "1 node(s)" in text


def test_status_json(net: dict) -> None:
    proc = _status(net["tmp"], "json", "--gateway", net["gw"].http, "--json")
    assert proc.popen.wait(30) == 0
    doc = json.loads("\n".join(line for line in proc._lines if line != "\0eof"))
    (node,) = doc["data"]
    assert node["name"] == "status-node"
    assert node["peer_id"] == net["node"].peer_id


def test_status_watch_refreshes_and_stops_cleanly_on_ctrl_c(net: dict) -> None:
    proc = _status(net["tmp"], "watch", "--gateway", net["gw"].http, "--watch", "0.2")
    deadline = time.monotonic() + 30
    while sum("Ctrl-C to stop" in line for line in list(proc._lines)) < 2:  # two frames drawn
        assert time.monotonic() < deadline, proc.tail()
        time.sleep(0.05)
    proc.signal(signal.SIGINT)
    assert proc.popen.wait(15) == 0
    log = proc.log.read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    json_watch = _status(net["tmp"], "watch-json", "--gateway", net["gw"].http, "--watch", "0.2", "--json")
    line = json_watch.wait_line("{")
    assert json.loads(line)["data"][0]["peer_id"] == net["node"].peer_id
    json_watch.signal(signal.SIGINT)
    assert json_watch.popen.wait(15) == 0
