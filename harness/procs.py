"""Starting tooti's real processes (gateways, nodes, backends) for tests and benchmarks, and stopping them.

Each process writes stderr to a log file in the test's temporary directory; stdout is read
for the single "ready" line each command prints. ``logs_text()`` gathers every log for
assertions (for example, that no secret was ever logged).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tooti.p2p import keys, membership

REPO = Path(__file__).resolve().parent.parent
ALL_PROCS: list[Proc] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(
        self, args: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.args = args
        self.log = log
        self._lines: list[str] = []
        self._cond = threading.Condition()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log_file = open(log, "ab")
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=full_env,
            cwd=cwd or REPO,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        ALL_PROCS.append(self)

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._lines.append("\0eof")
            self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float = 60) -> str:
        """Block until a stdout line starts with ``prefix`` (an event, not a sleep)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    if line.startswith(prefix):
                        return line
                    if line == "\0eof":
                        raise RuntimeError(
                            f"{self.args[2:5]} exited ({self.popen.poll()}) before '{prefix}':\n{self.tail()}"
                        )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no '{prefix}' from {self.args} in {timeout}s:\n{self.tail()}")
                self._cond.wait(left)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()
        return self.popen.returncode


def tooti(args: list[str], *, log: Path, env: dict[str, str] | None = None) -> Proc:
    return Proc([sys.executable, "-m", "tooti", *args], log=log, env=env)


@functools.cache
def network() -> tuple[Path, str]:
    """The test run's network: a network key file (gateways started here admit themselves
    with it) and its id (which every node and gateway here trusts)."""
    path = Path(tempfile.mkdtemp(prefix="tooti-net-")) / "network.key"
    path.write_text(keys.generate(keys.NETWORK_PRIVATE) + "\n")
    path.chmod(0o600)
    return path, membership.network_id(path.read_text().strip())


def gateway_membership() -> dict[str, str]:
    """A gateway config's ``network`` keys that make it a member of the test network."""
    key_file, network_id = network()
    return {"id": network_id, "key_file": str(key_file)}


class Gateway:
    def __init__(self, proc: Proc, http: str, p2p: str, config: Path) -> None:
        self.proc, self.http, self.p2p, self.config = proc, http, p2p, config
        self.base_url = http + "/v1"

    @property
    def peer_id(self) -> str:
        return self.p2p.rsplit("/p2p/", 1)[1]


def start_gateway(
    tmp: Path,
    name: str = "gw",
    *,
    auth: str = "open",
    database_url: str | None = None,
    bootstrap: list[str] = (),
    ttl: float = 15.0,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Gateway:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "gateway": {
            "identity_key_file": str(d / "gateway.key"),
            "http_listen": f"127.0.0.1:{free_port()}",
            "auth": auth,
        },
        "network": {
            "listen": [f"/ip4/127.0.0.1/tcp/{free_port()}"],
            "bootstrap": list(bootstrap),
            **gateway_membership(),
        },
        "registry": {"heartbeat_ttl_sec": ttl},
        "database": {"url": database_url or f"sqlite:///{d / 'tooti.db'}"},
    }
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    path = d / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = tooti(["gateway", "start", "-file", str(path)], log=d / "gateway.log", env=env)
    line = proc.wait_line("tooti gateway ready:")
    fields = dict(part.split("=", 1) for part in line.split(": ", 1)[1].split(" ") if "=" in part)
    return Gateway(proc, fields["http"], fields["p2p"], path)


class Node:
    def __init__(self, proc: Proc, peer_id: str, config: Path) -> None:
        self.proc, self.peer_id, self.config = proc, peer_id, config


def write_node_config(
    tmp: Path,
    name: str,
    *,
    gateways: list[Gateway],
    backend: dict[str, Any],
    node: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "node": {"name": name, "identity_key_file": str(d / "node.key"), **(node or {})},
        # no listen address: dial out only
        "network": {"bootstrap": [g.p2p for g in gateways], "id": network()[1]},
        "backend": backend,
        "heartbeat": {"interval_sec": 1.0},
    }
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    path = d / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_node(
    tmp: Path,
    name: str,
    *,
    gateways: list[Gateway],
    backend: dict[str, Any],
    node: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Node:
    path = write_node_config(tmp, name, gateways=gateways, backend=backend, node=node, extra=extra)
    proc = tooti(["node", "start", "-file", str(path)], log=path.parent / "node.log", env=env)
    peer = ""
    if wait:
        line = proc.wait_line("tooti node ready:")
        peer = line.split("peer=", 1)[1].split()[0]
    return Node(proc, peer, path)


def start_backend(module: str, log: Path, *args: str) -> tuple[Proc, str]:
    """Start ``python -m module --port P ...`` and wait for its "ready URL" line."""
    port = free_port()
    proc = Proc([sys.executable, "-m", module, "--port", str(port), *args], log=log)
    url = proc.wait_line("ready", timeout=120).split()[-1]
    return proc, url


def admin(database_url: str, *args: str) -> str:
    """Run ``tooti <args>`` (an administrative command) against ``database_url``; its stdout.
    Fails the test when the command fails."""
    out = subprocess.run(
        [sys.executable, "-m", "tooti", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "TOOTI_DATABASE_URL": database_url},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
