"""Starting the systems under test (fake upstream, tooti, LiteLLM) and reading their /proc figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness.procs import REPO, Proc, free_port, start_backend, start_gateway, start_node

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-litellm"
# Pinned: the version installed and measured when the suite was written. Change it on purpose.
LITELLM_VERSION = "1.106.2"
MATPLOTLIB_SPEC = "matplotlib"
PYSPY_SPEC = "py-spy"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------ /proc helpers


def children(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        tree += kids
        frontier += kids
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (threads included), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def memory_mb(pids: list[int]) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) summed over ``pids``, in MiB."""
    rss = hwm = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return {"rss_mb": round(rss / 1024, 1), "peak_rss_mb": round(hwm / 1024, 1)}


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    try:
        with opener.open(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_ok(url: str, body: dict[str, Any] | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, last = http_json(url, body, timeout=10)
            if status == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{what} not ready after {timeout}s: {last!r}")


# --------------------------------------------------------------------------------------- processes


class Upstream:
    def __init__(self, tmp: Path, tokens: int = 1000) -> None:
        self.proc, self.url = start_backend(
            "tests.standins.openai_upstream", tmp / "upstream.log", "--tokens", str(tokens), "--model", "fake"
        )
        self.port = int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, Any]:
        return http_json(self.url + "/_stats")[1]


class Tooti:
    def __init__(
        self, tmp: Path, upstream_url: str, *, max_concurrency: int = 512, http_server: str = "tooti"
    ) -> None:
        self.gateway = start_gateway(tmp, auth="open", extra={"gateway": {"http_server": http_server}})
        self.node = start_node(
            tmp,
            "node1",
            gateways=[self.gateway],
            backend={"type": "openai", "base_url": upstream_url + "/v1"},
            node={"max_concurrency": max_concurrency},
        )
        self.url = self.gateway.http
        self.port = int(self.url.rsplit(":", 1)[1])
        wait_ok(
            self.url + "/v1/chat/completions",
            {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            60,
            "tooti gateway → node",
        )

    @property
    def gw_pid(self) -> int:
        return self.gateway.proc.popen.pid

    @property
    def node_pid(self) -> int:
        return self.node.proc.popen.pid

    def stop(self) -> None:
        self.node.proc.stop()
        self.gateway.proc.stop()


def ensure_venv(log: Path) -> Path:
    """Create bench/.venv-litellm with the pinned LiteLLM proxy, matplotlib and py-spy."""
    py = VENV / "bin" / "python"
    want = [f"litellm[proxy]=={LITELLM_VERSION}", MATPLOTLIB_SPEC, PYSPY_SPEC]
    if py.exists():
        probe = subprocess.run(
            [str(py), "-c", "import importlib.metadata as m, matplotlib;print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        )
        if (
            probe.returncode == 0
            and probe.stdout.strip() == LITELLM_VERSION
            and (VENV / "bin" / "py-spy").exists()
        ):
            return VENV
    else:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing {' '.join(want)} into {VENV} (log: {log})", flush=True)
    with open(log, "ab") as f:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *want], check=True, stdout=f, stderr=f)
    return VENV


class LiteLLM:
    def __init__(self, tmp: Path, upstream_url: str) -> None:
        ensure_venv(tmp / "pip.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            "  - model_name: fake\n"
            "    litellm_params:\n"
            "      model: openai/fake\n"
            f"      api_base: {upstream_url}/v1\n"
            "      api_key: sk-bench-unused\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  set_verbose: false\n"
            "general_settings:\n"
            "  # Like tooti's `auth: open`: no key checked on either side, so neither pays for auth.\n"
            "  dangerously_permit_weak_or_unset_master_key: true\n"
        )
        env = {
            # Everything stays on loopback: no model-cost-map download, no telemetry, no proxies.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "NO_PROXY": "*",
            "no_proxy": "*",
            "HTTP_PROXY": "",
            "HTTPS_PROXY": "",
            "http_proxy": "",
            "https_proxy": "",
        }
        self.proc = Proc(
            [
                str(VENV / "bin" / "litellm"),
                "--config",
                str(cfg),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num_workers",
                "1",
            ],
            log=tmp / "litellm.log",
            env=env,
            cwd=tmp,
        )
        wait_ok(self.url + "/health/liveliness", None, 180, "LiteLLM proxy")
        wait_ok(
            self.url + "/v1/chat/completions",
            {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            60,
            "LiteLLM → upstream",
        )

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def stop(self) -> None:
        self.proc.stop()


def _commit() -> str:
    """The commit measured (short hash), not the checkout's path on this machine."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "tooti_commit": _commit(),
    }
