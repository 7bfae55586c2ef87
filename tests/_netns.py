"""A real NAT for tests, built from Linux network namespaces and iptables.

The ``nat_lab`` fixture builds, for one test module:

* ``tooti-pub-<id>``: the "internet". Gateways (and a backend) live here on ``10.A.0.2``;
  the host's end of its veth is ``10.A.0.1``, which is also the NAT's public address.
* ``tooti-priv-<id>``: a private network. Nodes live here on ``10.B.0.2`` with a default
  route via the host at ``10.B.0.1``.
* the root namespace as the NAT router: ``ip_forward=1``, MASQUERADE for the private
  subnet, and new connections into the private subnet dropped (replies to connections the
  private side opened still pass). The public namespace even has a route towards the
  private subnet through the router, so the only thing keeping inbound connections out is
  the NAT itself, as on a real home router.

Everything made is removed in a ``finally`` (processes, namespaces, veths, each iptables rule
by exact deletion) and ``ip_forward`` is put back to what it was. Traffic only ever goes to
loopback and to these namespaces' own addresses.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import procs as _procs
from tests.conftest import require

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

# Run as ``python -c PROBE listen HOST PORT SECONDS`` or ``... connect HOST PORT SECONDS``.
# listen: prints "listening", then "peer <ip>" for the first connection or "none" after SECONDS.
# connect: prints "connected <local ip>", "refused", "timeout" or "error <what>".
PROBE = r"""
import socket, sys
mode, host, port, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if mode == "listen":
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(4)
    srv.settimeout(secs)
    print("listening", flush=True)
    try:
        conn, peer = srv.accept()
        print("peer", peer[0], flush=True)
        conn.close()
    except socket.timeout:
        print("none", flush=True)
else:
    s = socket.socket()
    s.settimeout(secs)
    try:
        s.connect((host, port))
        print("connected", s.getsockname()[0], flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except OSError as e:
        print("error", e, flush=True)
    finally:
        s.close()
"""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}"
        )
    return r


def _used_second_octets() -> set[int]:
    """Second octets of every 10.x network this machine already routes or owns."""
    text = _run("ip", "-4", "route", "show", "table", "all", check=False).stdout
    text += _run("ip", "-4", "-o", "addr", "show", check=False).stdout
    used: set[int] = set()
    for word in text.replace("/", " ").split():
        parts = word.split(".")
        if len(parts) == 4 and parts[0] == "10" and parts[1].isdigit():
            used.add(int(parts[1]))
    return used


def _pick_subnets() -> tuple[int, int]:
    free = [n for n in range(201, 251) if n not in _used_second_octets()]
    if len(free) < 2:
        raise RuntimeError("no two free 10.x.0.0/24 subnets in 10.201-10.250")
    rng = secrets.SystemRandom()
    a, b = rng.sample(free, 2)
    return a, b


@dataclass
class NatLab:
    """The namespaces and addresses of one lab, plus helpers to run things inside them."""

    suffix: str
    pub_ns: str
    priv_ns: str
    pub_net: str  # e.g. 10.201.0.0/24
    priv_net: str
    nat_ip: str  # the router's address on the public side: what the internet sees
    pub_ip: str  # the public namespace's own address (gateways, backends)
    priv_gw_ip: str  # the router's address on the private side
    priv_ip: str  # the private namespace's own address (nodes)
    procs: list[_procs.Proc] = field(default_factory=list)

    def popen(self, ns: str, args: list[str], *, log: Path, env: dict[str, str] | None = None) -> _procs.Proc:
        """Start ``args`` inside namespace ``ns`` as a :class:`_procs.Proc` (stopped at teardown)."""
        proc = _procs.Proc(["ip", "netns", "exec", ns, *args], log=log, env=env)
        self.procs.append(proc)
        return proc

    def python(
        self, ns: str, args: list[str], *, log: Path, env: dict[str, str] | None = None
    ) -> _procs.Proc:
        return self.popen(ns, [sys.executable, *args], log=log, env=env)

    def run(self, ns: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=timeout
        )

    def stop_all(self) -> None:
        errors = []
        for p in reversed(self.procs):
            try:
                p.stop(timeout=10)
            except Exception as e:
                errors.append(f"{p.args}: {e}")
        if errors:
            raise RuntimeError("; ".join(errors))

    # -- plain TCP probes ------------------------------------------------------------------

    def listen(self, ns: str, host: str, port: int, seconds: float, log: Path) -> _procs.Proc:
        proc = self.python(ns, ["-c", PROBE, "listen", host, str(port), str(seconds)], log=log)
        proc.wait_line("listening", timeout=20)
        return proc

    def connect(self, ns: str | None, host: str, port: int, seconds: float) -> str:
        """Try one TCP connection from ``ns`` (None: the root namespace); the probe's verdict."""
        cmd = [sys.executable, "-c", PROBE, "connect", host, str(port), str(seconds)]
        if ns is not None:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 20)
        return r.stdout.strip() or f"error rc={r.returncode} {r.stderr.strip()}"

    def established_peers(self, ns: str, port: int) -> set[str]:
        """Remote IPs of established TCP connections to local ``port`` inside ``ns``."""
        r = self.run(ns, "ss", "-Htn", "state", "established", f"( sport = :{port} )")
        peers = set()
        for line in r.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                peers.add(cols[3].rsplit(":", 1)[0].strip("[]"))
        return peers

    # -- tooti processes ---------------------------------------------------------------------

    def start_gateway(
        self,
        tmp: Path,
        name: str,
        *,
        http_port: int,
        p2p_port: int,
        bootstrap: list[str] = (),
        ttl: float = 15.0,
        extra: dict[str, Any] | None = None,
    ) -> _procs.Gateway:
        """A gateway in the public namespace, on its public address (HTTP reachable from the root
        namespace, which routes to the public subnet through the veth)."""
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = {
            "gateway": {
                "identity_key_file": str(d / "gateway.key"),
                "http_listen": f"{self.pub_ip}:{http_port}",
                "auth": "open",
            },
            "network": {
                "listen": [f"/ip4/{self.pub_ip}/tcp/{p2p_port}"],
                "bootstrap": list(bootstrap),
                **_procs.gateway_membership(),
            },
            "registry": {"heartbeat_ttl_sec": ttl},
            "database": {"url": f"sqlite:///{d / 'tooti.db'}"},
        }
        for section, values in (extra or {}).items():
            cfg.setdefault(section, {}).update(values)
        path = d / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = self.python(
            self.pub_ns, ["-m", "tooti", "gateway", "start", "-file", str(path)], log=d / "gateway.log"
        )
        line = proc.wait_line("tooti gateway ready:")
        fields = dict(part.split("=", 1) for part in line.split(": ", 1)[1].split(" ") if "=" in part)
        return _procs.Gateway(proc, fields["http"], fields["p2p"], path)

    def start_node(
        self,
        tmp: Path,
        name: str,
        *,
        gateways: list[_procs.Gateway],
        backend: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> _procs.Node:
        """A node in the private namespace; its config bootstraps to ``gateways`` and has no listen address."""
        path = _procs.write_node_config(tmp, name, gateways=gateways, backend=backend, extra=extra)
        proc = self.python(
            self.priv_ns, ["-m", "tooti", "node", "start", "-file", str(path)], log=path.parent / "node.log"
        )
        line = proc.wait_line("tooti node ready:")
        return _procs.Node(proc, line.split("peer=", 1)[1].split()[0], path)

    def start_llama(self, tmp: Path, *, port: int, alias: str = "smollm2") -> tuple[_procs.Proc, str]:
        """The real llama.cpp server (SmolLM2-135M, one thread) in the public namespace."""
        d = tmp / "llama"
        d.mkdir(parents=True, exist_ok=True)
        proc = self.python(
            self.pub_ns,
            [
                "-m",
                "tooti.llamacpp",
                "--host",
                self.pub_ip,
                "--port",
                str(port),
                "--threads",
                "1",
                "--parallel",
                "2",
                "--ctx",
                "4096",
                "--alias",
                alias,
            ],
            log=d / "llama.log",
        )
        url = proc.wait_line("ready", timeout=120).split()[-1]
        return proc, url


class _Undo:
    """A stack of clean-up steps, each run even when an earlier one fails."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Any]] = []
        self.errors: list[str] = []

    def push(self, what: str, fn: Any) -> None:
        self.steps.append((what, fn))

    def run_all(self) -> None:
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except Exception as e:
                self.errors.append(f"{what}: {e}")


def _iptables(table: str, op: str, rule: list[str]) -> None:
    _run("iptables", "-w", "-t", table, op, *rule)


@pytest.fixture(scope="module")
def nat_lab() -> Iterator[NatLab]:
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("network namespaces need Linux and iproute2's `ip`; not available here")
    suffix = secrets.token_hex(3)
    pub_ns, priv_ns = f"tooti-pub-{suffix}", f"tooti-priv-{suffix}"
    undo = _Undo()
    try:
        r = _run("ip", "netns", "add", pub_ns, check=False)
        if r.returncode != 0:
            # Even under CI=true this is a skip: the runner cannot create namespaces at all.
            pytest.skip(
                f"cannot create a network namespace (`ip netns add` as uid {os.geteuid()}): "
                f"{r.stderr.strip()}"
            )
        undo.push(f"delete {pub_ns}", lambda: _run("ip", "netns", "del", pub_ns))
        require(
            shutil.which("iptables") is not None,
            "iptables is not installed (apt-get install -y iptables); it is needed to build a real NAT",
        )
        probe = _run("iptables", "-w", "-t", "nat", "-S", "POSTROUTING", check=False)
        require(probe.returncode == 0, f"iptables is not usable here: {probe.stderr.strip()}")

        _run("ip", "netns", "add", priv_ns)
        undo.push(f"delete {priv_ns}", lambda: _run("ip", "netns", "del", priv_ns))
        a, b = _pick_subnets()
        lab = NatLab(
            suffix=suffix,
            pub_ns=pub_ns,
            priv_ns=priv_ns,
            pub_net=f"10.{a}.0.0/24",
            priv_net=f"10.{b}.0.0/24",
            nat_ip=f"10.{a}.0.1",
            pub_ip=f"10.{a}.0.2",
            priv_gw_ip=f"10.{b}.0.1",
            priv_ip=f"10.{b}.0.2",
        )
        # The processes go first at teardown, before their namespaces.
        undo.push("stop processes", lab.stop_all)

        for ns, host_if, host_ip, ns_ip in (
            (pub_ns, f"tpub{suffix}", lab.nat_ip, lab.pub_ip),
            (priv_ns, f"tprv{suffix}", lab.priv_gw_ip, lab.priv_ip),
        ):
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            # Deleting one end deletes both; deleting the namespace would too. Explicit anyway.
            undo.push(
                f"delete {host_if}",
                lambda i=host_if: (
                    _run("ip", "link", "del", i)
                    if _run("ip", "link", "show", i, check=False).returncode == 0
                    else None
                ),
            )
            _run("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
            _run("ip", "link", "set", host_if, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{ns_ip}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
        # The private network's way out is the router; the "internet" can route towards the
        # private subnet through the router too, so only the NAT stops inbound connections.
        _run("ip", "-n", priv_ns, "route", "add", "default", "via", lab.priv_gw_ip)
        _run("ip", "-n", pub_ns, "route", "add", lab.priv_net, "via", lab.nat_ip)

        previous = IP_FORWARD.read_text().strip()
        undo.push(f"restore ip_forward={previous}", lambda: IP_FORWARD.write_text(previous + "\n"))
        IP_FORWARD.write_text("1\n")

        masquerade = ["POSTROUTING", "-s", lab.priv_net, "-j", "MASQUERADE"]
        _iptables("nat", "-A", masquerade)
        undo.push("delete MASQUERADE rule", lambda: _iptables("nat", "-D", masquerade))
        # Inserted at the top of FORWARD, so they decide before any rule already there (and
        # work even if FORWARD's policy is DROP). Final order: drop, accept out, accept replies.
        forward = [
            [
                "FORWARD",
                "-s",
                lab.pub_net,
                "-d",
                lab.priv_net,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            ["FORWARD", "-s", lab.priv_net, "-d", lab.pub_net, "-j", "ACCEPT"],
            ["FORWARD", "-d", lab.priv_net, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
        ]
        for rule in forward:
            _iptables("filter", "-I", [rule[0], "1", *rule[1:]])
            undo.push(
                f"delete FORWARD rule {' '.join(rule[1:])}", lambda r=rule: _iptables("filter", "-D", r)
            )

        yield lab
    finally:
        undo.run_all()
        if undo.errors:
            raise RuntimeError("nat_lab cleanup failed:\n" + "\n".join(undo.errors))
