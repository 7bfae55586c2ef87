"""Spike: a minimal OpenAI-compatible streaming proxy on hypercorn + quart-trio.

What it explores: ``POST /v1/chat/completions`` relayed to an OpenAI-compatible backend through
one shared ``httpx.AsyncClient``, the SSE body passed on read by read (never buffered); what
reaches the backend when the client hangs up mid-stream; quart-trio's ``RESPONSE_TIMEOUT``
(60 s by default: a longer stream is cut); and the latency the hop adds. Client and proxy run
in one ``trio.run``; the backend is a process: the repository's fake upstream
(``python -m tests.standins.openai_upstream``, default) or llama.cpp with SmolLM2-135M
(``python -m tooti.llamacpp``, needs ``tooti[backend]``).

    python spikes/openai_proxy.py [--backend fake|llamacpp] [--runs 20]

Printed here (2 shared cores, load average 4-5; medians of interleaved requests)::

    backend fake (32 tokens, 5 ms apart) at http://127.0.0.1:35897
    direct: first token 1.1 ms, whole stream 157.2 ms, 34 body reads
    proxy:  first token 2.6 ms, whole stream 158.2 ms, 34 body reads
    added by the proxy: +1.5 ms first token, +1.0 ms whole stream
    backend closed a kept-alive connection (retried): 0 of 40 requests
    hang-up after 3 chunks: relay cancelled 0.6 ms later; upstream cancelled = 1
    RESPONSE_TIMEOUT=1: 2 s stream ended after 1.01 s, status 200, 21 events, [DONE] seen: False,
      client error: RemoteProtocolError
    RESPONSE_TIMEOUT=None: 2 s stream ended after 1.96 s, status 200, 43 events, [DONE] seen: True,
      client error: none

    backend llamacpp (smollm2, max 32) at http://127.0.0.1:43385          (--runs 40)
    direct: first token 9.1 ms, whole stream 198.8 ms, 34 body reads
    proxy:  first token 10.6 ms, whole stream 198.8 ms, 34 body reads
    added by the proxy: +1.5 ms first token, -0.0 ms whole stream
    backend closed a kept-alive connection (retried): 0 of 80 requests

(Other fake runs: +2.4 / +3.0 ms, -0.1 / +1.1 ms.) The hop costs 1-3 ms and keeps one chunk
per token. A hang-up reaches the backend within a millisecond (quart-trio cancels the
generator; its ``finally`` closes the upstream response). RESPONSE_TIMEOUT cuts a stream with
no error event and no ``[DONE]``: only the missing last chunk of the chunked body tells the
client. llama.cpp sometimes closes a connection unanswered when the next request follows a
streamed answer at once (2 of 30 back-to-back, 12 of 40 in an earlier non-interleaved run;
0 of 30 50 ms apart), and httpx does not retry it: hence ``send`` below.

What tooti took from it: the gateway is a quart-trio app served by hypercorn in the same
``trio.run`` as the libp2p host; streamed answers are async generators whose cancellation (client
gone) resets the libp2p stream to the node, which closes its backend request; the node shares
one ``httpx.AsyncClient`` with explicit timeouts and pool limits; each library default on the
path (RESPONSE_TIMEOUT, BODY_TIMEOUT, MAX_CONTENT_LENGTH, httpx's 5 s timeouts, hypercorn's
keep-alive) is to be set on purpose.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

REPO = Path(__file__).resolve().parent.parent
TOKENS, DELAY_MS = 32, 5.0
events: dict[str, float] = {}  # what the proxy saw, for the cancellation demo
stale = {"retried": 0}
JSON = {"content-type": "application/json"}


async def send(client: httpx.AsyncClient, req: httpx.Request) -> httpx.Response:
    """Send, retrying once on a fresh connection if a kept-alive one was closed unanswered
    ("Server disconnected without sending a response"; httpx does not retry it)."""
    try:
        return await client.send(req, stream=True)
    except httpx.RemoteProtocolError:
        stale["retried"] += 1
        return await client.send(req, stream=True)


def make_proxy(upstream: httpx.AsyncClient) -> QuartTrio:
    app = QuartTrio("spike-proxy")
    # Quart cancels sending a response after RESPONSE_TIMEOUT (default 60 s) without telling
    # anyone: a long generation would end mid-stream with a 200. The backend's own deadline
    # is the real bound, so none here.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = 30  # reading the request body (default 60 s)
    app.config["MAX_CONTENT_LENGTH"] = 4 * 1024 * 1024  # default 16 MiB

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body = await request.get_data()
        resp = await send(upstream, upstream.build_request("POST", request.path, content=body, headers=JSON))
        # An answer in one piece, or an error: passed on whole.
        if not (ctype := resp.headers.get("content-type", "")).startswith("text/event-stream"):
            data = await resp.aread()
            await resp.aclose()
            return Response(data, status=resp.status_code, content_type=ctype)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for data in resp.aiter_raw():  # each backend read goes out as it came
                    yield data
            finally:
                # Client gone -> quart-trio cancels this generator; closing the response
                # closes the upstream connection, which is how the backend learns of it.
                events["relay_closed"] = time.perf_counter()
                with trio.CancelScope(shield=True):
                    await resp.aclose()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(relay(), status=resp.status_code, content_type=ctype, headers=headers)

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_backend(kind: str) -> tuple[subprocess.Popen[str], str]:
    if kind == "llamacpp":
        cmd = ["-m", "tooti.llamacpp", "--port", str(free_port())]
    else:
        cmd = ["-m", "tests.standins.openai_upstream", "--port", "0", "--model", "fake"]
        cmd += ["--tokens", str(TOKENS), "--delay-ms", str(DELAY_MS)]  # one SSE chunk per token
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    found = re.search(r"http://\S+", proc.stdout.readline())  # "ready http://HOST:PORT"
    if found is None:
        proc.kill()
        raise SystemExit(f"{kind} backend did not start")
    return proc, found.group(0)


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Count from one to twenty."}]
    return {"model": model, "messages": messages, "max_tokens": TOKENS, "stream": True, **extra}


async def timed_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """(ms to the first content delta, ms to the end, body reads)."""
    t0, first, reads, data = time.perf_counter(), 0.0, 0, b""
    r = await send(client, client.build_request("POST", url + "/v1/chat/completions", json=body))
    async for piece in r.aiter_raw():
        reads += 1
        data += piece
        if not first and b'"content":"' in data.replace(b'"content":""', b""):
            first = (time.perf_counter() - t0) * 1000
    await r.aclose()
    return first, (time.perf_counter() - t0) * 1000, reads


async def compare(client: httpx.AsyncClient, backend: str, proxy: str, model: str, runs: int) -> None:
    samples: dict[str, list[tuple[float, float, int]]] = {"direct": [], "proxy": []}
    for _ in range(runs):  # interleaved, so machine noise hits both alike
        for name, url in (("direct", backend), ("proxy", proxy)):
            samples[name].append(await timed_stream(client, url, chat_body(model)))
    med = {name: [statistics.median(s[i] for s in got) for i in range(3)] for name, got in samples.items()}
    for name, (ttft, total, reads) in med.items():
        print(
            f"{name + ':':7} first token {ttft:.1f} ms, whole stream {total:.1f} ms, {reads:.0f} body reads"
        )
    (d_ttft, d_total, _), (p_ttft, p_total, _) = med["direct"], med["proxy"]
    print(
        f"added by the proxy: {p_ttft - d_ttft:+.1f} ms first token, {p_total - d_total:+.1f} ms whole stream"
    )
    print(f"backend closed a kept-alive connection (retried): {stale['retried']} of {2 * runs} requests")


async def hang_up(client: httpx.AsyncClient, backend: str, proxy: str, model: str) -> None:
    body = chat_body(model, x_fake={"tokens": 1000, "delay_ms": 10})
    async with client.stream("POST", proxy + "/v1/chat/completions", json=body) as r:
        pieces = r.aiter_raw()
        for _ in range(3):
            await anext(pieces)
        t_close = time.perf_counter()
    # Leaving the block closes the client's connection (httpx does not reuse a half-read one).
    with trio.move_on_after(5):
        while events.get("relay_closed", 0) < t_close:
            await trio.sleep(0.001)
    cancelled = -1
    with trio.move_on_after(5):
        while (cancelled := (await client.get(backend + "/_stats")).json()["cancelled"]) < 1:
            await trio.sleep(0.01)
    lag = (events["relay_closed"] - t_close) * 1000
    print(f"hang-up after 3 chunks: relay cancelled {lag:.1f} ms later; upstream cancelled = {cancelled}")


async def response_timeout(client: httpx.AsyncClient, app: QuartTrio, proxy: str, model: str) -> None:
    body = chat_body(model, max_tokens=40, x_fake={"tokens": 40, "delay_ms": 50})  # about 2 s
    for setting in (1, None):
        app.config["RESPONSE_TIMEOUT"] = setting  # read per request by quart-trio
        t0 = time.perf_counter()
        data, error = b"", "none"
        async with client.stream("POST", proxy + "/v1/chat/completions", json=body) as r:
            try:
                async for piece in r.aiter_raw():
                    data += piece
            except httpx.RemoteProtocolError as exc:  # hypercorn closed without the last chunk
                error = type(exc).__name__
            status = r.status_code
        took = time.perf_counter() - t0
        print(
            f"RESPONSE_TIMEOUT={setting}: 2 s stream ended after {took:.2f} s, status {status},"
            f" {data.count(b'data: ')} events, [DONE] seen: {b'[DONE]' in data}, client error: {error}"
        )
    app.config["RESPONSE_TIMEOUT"] = None


async def main(kind: str, runs: int) -> None:
    proc, backend = start_backend(kind)
    try:
        # httpx defaults: 5 s for every phase (a first token can take longer), pool of 100.
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        timeout = httpx.Timeout(300.0, connect=5.0)
        async with (
            httpx.AsyncClient(base_url=backend, timeout=timeout, limits=limits) as upstream,
            httpx.AsyncClient(timeout=timeout, limits=limits) as client,
            trio.open_nursery() as nursery,
        ):
            app = make_proxy(upstream)
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            config.loglevel = "WARNING"  # not the "Running on" banner
            config.keep_alive_timeout = 75  # hypercorn's default 5 s drops idle pooled clients
            proxy = (await nursery.start(serve, app, config))[0]
            model = (await client.get(backend + "/v1/models")).json()["data"][0]["id"]
            what = f"{TOKENS} tokens, {DELAY_MS:g} ms apart" if kind == "fake" else f"{model}, max {TOKENS}"
            print(f"backend {kind} ({what}) at {backend}")
            await compare(client, backend, proxy, model, runs)
            if kind == "fake":  # the fake's x_fake knobs make these two deterministic
                await hang_up(client, backend, proxy, model)
                await response_timeout(client, app, proxy, model)
            nursery.cancel_scope.cancel()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["fake", "llamacpp"], default="fake")
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    trio.run(main, a.backend, a.runs)
