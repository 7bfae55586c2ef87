"""What one SSE chunk costs in the gateway's HTTP front: Quart-Trio vs plain ASGI on Hypercorn vs h11.

    .venv/bin/python -m bench.http_front_cost [--streams 200] [--rate 20] [--seconds 8]

Three servers, each in its own process, stream the same paced tokens (one SSE event per HTTP
chunk, ``rate`` per second per stream, a drift-free schedule from ``trio.sleep_until``) to the
same driver (``bench/driver.py``):

* ``quart``: a QuartTrio route returning ``Response(async_generator)`` under Hypercorn, as the
  gateway's ``/v1/chat/completions`` does;
* ``asgi``: a bare ASGI callable under the same Hypercorn (``http.response.start`` then one
  ``http.response.body`` with ``more_body`` per token);
* ``h11``: the fake upstream (``tests/standins/openai_upstream.py``): h11 on a trio socket.

CPU-ms per chunk of each server process (utime+stime from /proc over the measured seconds) shows
what the framework layers cost per token, the pacing being the same in all three.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench import driver
from bench.targets import BENCH, Upstream, cpu_seconds

HOST = "127.0.0.1"
Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"tok%d "}}]}\n\n'


async def _tokens(n: int, spacing: float) -> AsyncIterator[bytes]:
    begin = trio.current_time()
    for i in range(n):
        if i:
            await trio.sleep_until(begin + i * spacing)
        yield _EVENT % i


def _params(body: bytes) -> tuple[int, float]:
    fake = json.loads(body).get("x_fake", {})
    return int(fake["tokens"]), float(fake["delay_ms"]) / 1000


def _quart_app() -> Any:
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("front-cost")

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        n, spacing = _params(await request.get_data())
        return Response(_tokens(n, spacing), content_type="text/event-stream")

    return app


async def _asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    n, spacing = _params(body)
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    async for chunk in _tokens(n, spacing):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def serve(kind: str, port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.backlog = 4096  # as the gateway sets it (Hypercorn's default of 100 drops SYNs in a burst)
    app = _quart_app() if kind == "quart" else _asgi_app
    print("ready", flush=True)
    trio.run(hypercorn_serve, app, config)


async def _measure(port: int, pid: int, streams: int, rate: float, seconds: float) -> dict[str, Any]:
    spacing = 1 / rate
    tokens = int(rate * (seconds + 3))
    body = json.dumps(
        {
            "model": "fake",
            "messages": [],
            "stream": True,
            "x_fake": {"tokens": tokens, "delay_ms": 1000 * spacing},
        }
    )
    raw = driver.build_request(HOST, port, "/v1/chat/completions", body.encode())
    got = 0
    window = [0.0, 0.0]

    def progress(n: int, now: float) -> None:
        nonlocal got
        if window[0] <= now < window[1]:
            got += n

    async def one(i: int) -> None:
        await trio.sleep(i / streams)
        conn = driver.Conn(HOST, port)
        await conn.connect()
        await conn.request(raw, stream=True, progress=progress)
        await conn.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(one, i)
        await trio.sleep(1.5)
        window[:] = [time.perf_counter(), time.perf_counter() + seconds]
        before = cpu_seconds([pid])
        await trio.sleep(seconds)
        after = cpu_seconds([pid])
    return {
        "chunks_per_s": round(got / seconds),
        "cpu_ms_per_chunk": round(1000 * (after - before) / max(got, 1), 4),
        "cores": round((after - before) / seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.http_front_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--serve", choices=["quart", "asgi"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    from harness.procs import free_port

    out: dict[str, Any] = {"streams": args.streams, "rate": args.rate}
    tmp = Path(tempfile.mkdtemp(prefix="tooti-front-"))
    up = Upstream(tmp, tokens=16)
    try:
        out["h11"] = trio.run(_measure, up.port, up.proc.popen.pid, args.streams, args.rate, args.seconds)
    finally:
        up.proc.stop()
    print(f"h11 (stand-in): {out['h11']}", flush=True)
    for kind in ("asgi", "quart"):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.http_front_cost", "--serve", kind, "--port", str(port)],
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            time.sleep(1.0)
            out[kind] = trio.run(_measure, port, proc.pid, args.streams, args.rate, args.seconds)
        finally:
            proc.terminate()
            proc.wait(10)
        print(f"{kind}: {out[kind]}", flush=True)
    (BENCH / "results" / "http-front-cost.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
