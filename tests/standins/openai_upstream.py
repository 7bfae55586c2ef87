"""A fault-injecting fake OpenAI-compatible upstream for tests and benchmarks, on h11.

Streams the way llama.cpp, vLLM and SGLang do: **one SSE event per token, each its own HTTP
chunk, written as its own socket send** — whatever the delay. (An earlier stand-in wrote 256
events per chunk when the delay was 0, so a whole answer crossed a relay as one block and made
relay figures look ~20x better than real servers allow.) ``batch`` (server default or per request)
puts several tokens in one chunk, for the rare test that wants that on purpose.

HTTP is parsed by h11 (a maintained, strict HTTP/1.1 state machine); the stand-in adds only the
OpenAI shapes (``_openai_shapes``) and the faults.

Run as a process::

    python -m tests.standins.openai_upstream --port N [--host 127.0.0.1] [--tokens 16]
        [--delay-ms 0] [--ttft-ms 0] [--batch 1] [--model fake [--model other ...]]

It prints ``ready http://HOST:PORT`` on stdout (flushed) once listening (``--port 0`` picks a free
port). In-process: ``upstream = await nursery.start(functools.partial(serve, 0, tokens=4))`` gives a
:class:`FakeUpstream` (``.url``, ``.port``, ``.stats``).

Endpoints (OpenAI shapes; errors are ``{"error": {"message", "type", "param": null, "code"}}``):

* ``GET /v1/models`` - the configured model ids; ``GET /health`` - ``{"status": "ok"}``.
* ``POST /v1/chat/completions``, ``POST /v1/completions`` - ``stream`` true or false. The answer is
  ``"tok0 tok1 ... tok{n-1} "`` (one token per stream event). ``n`` is the configured token count,
  capped by ``max_tokens`` / ``max_completion_tokens``; finish_reason is ``"length"`` when the cap cut
  it short, else ``"stop"``. The model echoed is the request's ``model`` (or the first configured one).
* ``POST /v1/embeddings`` - 8 floats per input, derived from sha256 of the input, L2-normalised
  (``encoding_format: "base64"`` gives little-endian float32 in base64).
* usage: ``prompt_tokens`` = whitespace-separated words over all message contents (text parts too),
  the prompt(s), or the embedding inputs (a token-id array counts its length);
  ``completion_tokens`` = tokens produced.

Timing: ``ttft_ms`` is slept after the stream's head and role chunk and before the first content
chunk; ``delay_ms`` is slept between content chunks (on a drift-free schedule). A non-streaming
answer is sent after the whole simulated generation, ``ttft_ms + (n - 1) * delay_ms``.

Per-request overrides, in the request body's extra object ``"x_fake"`` (checked in this order:
``fail: "before_head"``, then ``status``, then the normal answer; bad values get a 400):

* ``tokens`` (int), ``delay_ms`` (float), ``ttft_ms`` (float), ``batch`` (int, tokens per chunk)
  - override the server defaults;
* ``status`` (400..599) - answer that status at once with an OpenAI error body (stream or not);
* ``fail: "before_head"`` - close the connection at once without answering;
* ``fail: "after_tokens"`` with ``fail_after: k`` (default 1) - a stream sends its head, the role
  chunk and k content chunks, then closes the connection with no final chunk, no ``[DONE]`` and no
  terminating zero-length chunk; a non-streaming request gets its head and the first three
  quarters of the response bytes (a body shorter than its Content-Length), then the close.

Control endpoints (not in OpenAI):

* ``GET /_last_request`` - ``{"method", "path", "headers": {lower-case name: value}, "body": <the JSON
  body as received>, "raw": <the body text>}`` of the last inference request (404 before any);
* ``GET /_stats`` - ``{"requests", "completed", "cancelled", "active", "failed", "errors",
  "tokens_sent", "connections", "cpu_seconds", "uptime_seconds"}``. ``requests`` counts inference
  requests; ``completed`` those fully answered with 200; ``errors`` those answered with an error
  status (injected or a 400); ``failed`` the injected ``fail`` faults; ``cancelled`` those whose
  client went away before the answer was finished (a write failed, or the peer closed while tokens
  were being sent or slept for - the socket is watched for EOF concurrently); ``active`` those in
  progress; ``tokens_sent`` content tokens written; ``connections`` TCP connections accepted;
  ``cpu_seconds`` is ``time.process_time()`` of the serving process (of the whole test process
  when run in-process).
* ``POST /_reset`` - zero every counter but ``active`` and forget the last request.

HTTP (h11's rules): keep-alive for HTTP/1.1 (HTTP/1.0 connections close after one exchange),
pipelining, request bodies by ``Content-Length`` only (a ``Transfer-Encoding`` request gets 411 and
a close), ``Expect: 100-continue``. JSON answers carry ``Content-Length``; streams use chunked
encoding (a HTTP/1.0 client gets a close-delimited stream). A peer that half-closes its side during
a stream is taken as gone.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import json
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import h11
import trio

from tests.standins._openai_shapes import (
    EMBED_DIMS,
    Config,
    Plan,
    StreamTemplate,
    check_required,
    completion_id,
    embedding,
    error_body,
    json_bytes,
    make_plan,
    text,
    usage,
)

__all__ = ["Config", "FakeUpstream", "Stats", "main", "serve"]

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
RECV_SIZE = 65536
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class BadRequest(Exception):
    """The request is not acceptable HTTP/1.1; answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InjectedClose(Exception):
    """Raised by a handler to drop the connection on purpose (an ``x_fake.fail`` fault)."""


@dataclasses.dataclass
class Stats:
    """Counters over inference requests; see the module docstring for what each one counts."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    active: int = 0
    failed: int = 0
    errors: int = 0
    tokens_sent: int = 0
    connections: int = 0

    def reset(self) -> None:
        """Zero every counter except the ``active`` gauge."""
        self.requests = self.completed = self.cancelled = self.failed = self.errors = 0
        self.tokens_sent = self.connections = 0


@dataclasses.dataclass
class Request:
    """One request: method, path (without query), lower-cased headers, raw body."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes


class Connection:
    """One client connection: an h11 state machine over the socket; single reader, single writer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        # h11's default incomplete-event limit is 16 KiB; the stand-in has always taken 64 KiB heads.
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.peer_gone = False

    async def _fill(self) -> None:
        """Read once more into h11's buffer (an EOF or a reset is fed as the end of input)."""
        try:
            data = await self.stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.peer_gone = True
        if self.h11.their_state is not h11.CLOSED:
            self.h11.receive_data(data)

    async def _next(self) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequest(exc.error_status_hint, str(exc) or "malformed request") from None
            if event is not h11.NEED_DATA:
                return event
            await self._fill()

    async def read_request(self) -> Request | None:
        """The next request, or None when the peer closed (cleanly or not) between requests.

        Raises :class:`BadRequest` for input that is not an acceptable HTTP/1.1 request."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        event = await self._next()
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        assert isinstance(event, h11.Request)
        head = event
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key, val = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        if "transfer-encoding" in headers:
            raise BadRequest(411, "request bodies must have a Content-Length (no Transfer-Encoding)")
        if int(headers.get("content-length", "0")) > MAX_BODY:
            raise BadRequest(413, "request body too large")
        if self.h11.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        parts: list[bytes] = []
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # the peer went away inside the body
                return None
        return Request(
            method=head.method.decode("latin-1"),
            path=head.target.decode("latin-1").split("?", 1)[0],
            version=head.http_version.decode("latin-1"),
            headers=headers,
            body=b"".join(parts),
        )

    async def send(self, event: Any) -> None:
        """Serialize one h11 event and write it (one socket send)."""
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def watch(self, cancel_scope: trio.CancelScope) -> None:
        """Until cancelled: read (and keep, for pipelining) whatever the peer sends; at EOF or reset
        mark the peer gone and cancel ``cancel_scope``."""
        taken = 0
        while not self.peer_gone and taken <= MAX_HEAD + MAX_BODY:
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                break
            taken += len(data)
            self.h11.receive_data(data)
        self.peer_gone = True
        cancel_scope.cancel()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Status"


def _raw_error(status: int, message: str) -> bytes:
    """A whole error response that closes the connection, built by hand: after a protocol
    error h11 refuses to send anything, and the peer still deserves a reason."""
    body = error_body(status, message)
    reason = _reason(status)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


# ---------------------------------------------------------------------------------------- server

Route = Callable[[Connection, Request], Awaitable[None]]


class FakeUpstream:
    """The server: configuration, counters, last request, and the per-connection handler."""

    def __init__(self, config: Config | None = None) -> None:
        """A server with ``config`` (the defaults if None); not listening until :func:`serve`."""
        self.config = config or Config()
        self.stats = Stats()
        self.started = time.monotonic()
        self.last_request: Request | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._models_body = json_bytes(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "tooti-fake"}
                    for m in self.config.models
                ],
            }
        )
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/_stats"): self._stats,
            ("GET", "/_last_request"): self._last,
            ("POST", "/_reset"): self._reset,
            ("POST", "/v1/chat/completions"): self._inference,
            ("POST", "/v1/completions"): self._inference,
            ("POST", "/v1/embeddings"): self._inference,
        }

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening server."""
        return f"http://{self.host}:{self.port}"

    def stats_dict(self) -> dict[str, Any]:
        """What ``GET /_stats`` answers."""
        out: dict[str, Any] = dataclasses.asdict(self.stats)
        out["cpu_seconds"] = time.process_time()
        out["uptime_seconds"] = time.monotonic() - self.started
        return out

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection until the peer closes, a response closes it, or an error."""
        conn = Connection(stream)
        self.stats.connections += 1
        try:
            while True:
                try:
                    request = await conn.read_request()
                except BadRequest as e:
                    await stream.send_all(_raw_error(e.status, e.message))
                    return
                if request is None:
                    return
                route = self._routes.get((request.method, request.path))
                await (route or self._no_route)(conn, request)
                if conn.peer_gone or conn.h11.our_state is not h11.DONE:
                    return  # h11 says MUST_CLOSE (no keep-alive), or the peer left
        except (trio.BrokenResourceError, trio.ClosedResourceError, InjectedClose):
            pass
        except Exception as e:  # a bug here must not take the whole server down
            print(f"openai_upstream: connection error: {e!r}", file=sys.stderr, flush=True)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    # ---- small routes: each sends one whole response

    async def _send(self, conn: Connection, status: int, body: bytes) -> None:
        """One JSON response with ``Content-Length``, in one socket write."""
        headers = [*_JSON, (b"content-length", b"%d" % len(body))]
        h = conn.h11
        data = h.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
        data += h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
        await conn.stream.send_all(data)

    async def _error(self, conn: Connection, status: int, message: str, *, code: str | None = None) -> None:
        await self._send(conn, status, error_body(status, message, code=code))

    async def _no_route(self, conn: Connection, request: Request) -> None:
        """404 for an unknown path, 405 for a known path with the wrong method."""
        if any(path == request.path for _, path in self._routes):
            await self._error(conn, 405, f"method {request.method} not allowed")
        else:
            await self._error(conn, 404, f"unknown path {request.path}")

    async def _models(self, conn: Connection, request: Request) -> None:
        await self._send(conn, 200, self._models_body)

    async def _health(self, conn: Connection, request: Request) -> None:
        await self._send(conn, 200, b'{"status":"ok"}')

    async def _stats(self, conn: Connection, request: Request) -> None:
        await self._send(conn, 200, json_bytes(self.stats_dict()))

    async def _reset(self, conn: Connection, request: Request) -> None:
        """POST /_reset: zero the counters (not ``active``) and forget the last request."""
        self.stats.reset()
        self.last_request = None
        self.started = time.monotonic()
        await self._send(conn, 200, json_bytes(self.stats_dict()))

    async def _last(self, conn: Connection, request: Request) -> None:
        last = self.last_request
        if last is None:
            await self._error(conn, 404, "no inference request yet")
            return
        raw = last.body.decode("utf-8", "replace")
        try:
            body: Any = json.loads(last.body)
        except ValueError:
            body = None
        doc = {"method": last.method, "path": last.path, "headers": last.headers, "body": body, "raw": raw}
        await self._send(conn, 200, json_bytes(doc))

    # ---- inference

    async def _inference(self, conn: Connection, request: Request) -> None:
        """POST to one of the inference endpoints: account for it and answer it."""
        self.last_request = request
        stats = self.stats
        stats.requests += 1
        stats.active += 1
        try:
            outcome = await self._answer(conn, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            outcome = "cancelled"
        finally:
            stats.active -= 1
        if outcome == "cancelled":
            stats.cancelled += 1
            conn.peer_gone = True
        elif outcome == "failed":
            stats.failed += 1
            raise InjectedClose()
        elif outcome == "error":
            stats.errors += 1
        else:
            stats.completed += 1

    async def _answer(self, conn: Connection, request: Request) -> str:
        """Answer an inference request; returns "completed", "error", "failed" (the connection must
        be dropped now) or "cancelled" (the peer went away)."""
        try:
            body = json.loads(request.body)
        except ValueError:
            await self._error(conn, 400, "the body is not valid JSON")
            return "error"
        if not isinstance(body, dict):
            await self._error(conn, 400, "the body must be a JSON object")
            return "error"
        try:
            plan = make_plan(self.config, request.path, body)
            check_required(request.path, body)
        except ValueError as e:
            await self._error(conn, 400, str(e))
            return "error"
        if plan.fail == "before_head":
            return "failed"
        if plan.status is not None:
            await self._error(conn, plan.status, f"injected status {plan.status}", code=f"fake_{plan.status}")
            return "error"
        if request.path == "/v1/embeddings":
            return await self._embeddings(conn, body, plan)
        if plan.stream:
            return await self._stream(conn, request, plan)
        return await self._whole(conn, request, plan)

    async def _embeddings(self, conn: Connection, body: dict[str, Any], plan: Plan) -> str:
        """POST /v1/embeddings (ttft_ms is slept before answering)."""
        items = body["input"]
        if isinstance(items, str) or (
            isinstance(items, list) and items and all(isinstance(v, int) for v in items)
        ):
            items = [items]
        data = []
        b64 = body.get("encoding_format") == "base64"
        for i, item in enumerate(items):
            vector: Any = embedding(item)
            if b64:
                vector = base64.b64encode(struct.pack(f"<{EMBED_DIMS}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        doc = {
            "object": "list",
            "data": data,
            "model": plan.model,
            "usage": {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens},
        }
        if plan.ttft and not await self._sleep_watching(conn, plan.ttft):
            return "cancelled"
        await self._send(conn, 200, json_bytes(doc))
        return "completed"

    async def _sleep_watching(self, conn: Connection, seconds: float) -> bool:
        """Sleep ``seconds`` while watching the socket; False if the peer went away meanwhile."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.watch, nursery.cancel_scope)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
        return not conn.peer_gone

    async def _whole(self, conn: Connection, request: Request, plan: Plan) -> str:
        """A non-streaming completion, sent after ttft + (n - 1) * delay."""
        chat = request.path == "/v1/chat/completions"
        answer = text(plan.tokens)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "logprobs": None,
                "finish_reason": plan.finish_reason,
            }
        else:
            choice = {"index": 0, "text": answer, "logprobs": None, "finish_reason": plan.finish_reason}
        doc = {
            "id": completion_id(chat),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": plan.model,
            "choices": [choice],
            "usage": usage(plan),
        }
        payload = json_bytes(doc)
        wait = plan.ttft + plan.delay * max(plan.tokens - 1, 0)
        if wait > 0 and not await self._sleep_watching(conn, wait):
            return "cancelled"
        if plan.fail == "after_tokens":
            headers = [*_JSON, (b"content-length", b"%d" % len(payload))]
            data = conn.h11.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
            data += conn.h11.send(h11.Data(data=payload[: len(payload) - len(payload) // 4]))
            await conn.stream.send_all(data)
            return "failed"
        await self._send(conn, 200, payload)
        self.stats.tokens_sent += plan.tokens
        return "completed"

    async def _stream(self, conn: Connection, request: Request, plan: Plan) -> str:
        """A streamed completion; the socket is watched for EOF while it runs."""
        outcome = "cancelled"  # stays so if the watcher cancels the body
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.watch, nursery.cancel_scope)
            try:
                outcome = await self._stream_body(conn, request, plan)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                outcome = "cancelled"
            nursery.cancel_scope.cancel()
        return outcome

    async def _stream_body(self, conn: Connection, request: Request, plan: Plan) -> str:
        """Write the stream of ``plan``, one HTTP chunk (one socket send) per ``plan.batch``
        tokens; returns "completed" or "failed" (drop the connection)."""
        template = StreamTemplate(plan, request.path == "/v1/chat/completions")
        h, send, stats = conn.h11, conn.stream.send_all, self.stats
        limit = plan.tokens if plan.fail != "after_tokens" else min(plan.fail_after, plan.tokens)
        # No Content-Length: h11 chunks the body for HTTP/1.1 and closes after it for HTTP/1.0.
        data = h.send(h11.Response(status_code=200, headers=_SSE, reason=b"OK"))
        first = template.first()
        await send(data + h.send(h11.Data(data=first)) if first else data)
        if plan.ttft:
            await trio.sleep(plan.ttft)
        begin = trio.current_time()
        step = plan.batch
        for start in range(0, limit, step):
            if start and plan.delay > 0:
                await trio.sleep_until(begin + start * plan.delay)
            stop = min(start + step, limit)
            chunk = template.token(start) if stop - start == 1 else template.tokens(start, stop)
            await send(h.send(h11.Data(data=chunk)))
            stats.tokens_sent += stop - start
        if plan.fail == "after_tokens":
            return "failed"
        await send(h.send(h11.Data(data=template.last())) + h.send(h11.EndOfMessage()))
        return "completed"


# ------------------------------------------------------------------------------------ entry points


def _config(defaults: dict[str, Any]) -> Config:
    """A Config from serve()'s keyword defaults (tokens, delay_ms, ttft_ms, batch, model/models)."""
    known = {"tokens", "delay_ms", "ttft_ms", "batch", "model", "models"}
    unknown = set(defaults) - known
    if unknown:
        raise TypeError(f"unknown defaults: {sorted(unknown)}")
    models: Any = defaults.get("models", defaults.get("model", "fake"))
    model_list = [models] if isinstance(models, str) else list(models)
    return Config(
        tokens=int(defaults.get("tokens", 16)),
        delay_ms=float(defaults.get("delay_ms", 0.0)),
        ttft_ms=float(defaults.get("ttft_ms", 0.0)),
        batch=max(1, int(defaults.get("batch", 1))),
        models=model_list or ["fake"],
    )


async def serve(
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED,
    **defaults: Any,
) -> None:
    """Listen on ``host:port`` (0 = a free port) and serve until cancelled.

    ``defaults`` are ``tokens``, ``delay_ms``, ``ttft_ms``, ``batch`` and ``model`` (a string or a
    list; ``models`` is accepted too). Reports the running :class:`FakeUpstream` through
    ``task_status`` once listening; its ``url`` has the actual port."""
    upstream = FakeUpstream(_config(defaults))
    async with trio.open_nursery() as nursery:
        start = functools.partial(trio.serve_tcp, upstream.handle, port, host=host, backlog=4096)
        listeners = await nursery.start(start)
        upstream.host = host
        upstream.port = listeners[0].socket.getsockname()[1]
        task_status.started(upstream)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.standins.openai_upstream", description=(__doc__ or "").split("\n", 1)[0]
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="sleep between tokens (default 0)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="sleep before the first token (default 0)")
    parser.add_argument("--batch", type=int, default=1, help="tokens per HTTP chunk (default 1, like vLLM)")
    parser.add_argument("--model", action="append", help="model id to list (repeatable; default 'fake')")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: serve until interrupted, after printing ``ready http://HOST:PORT``."""
    args = _arguments(argv)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(
                functools.partial(
                    serve,
                    args.port,
                    host=args.host,
                    tokens=args.tokens,
                    delay_ms=args.delay_ms,
                    ttft_ms=args.ttft_ms,
                    batch=args.batch,
                    models=args.model or ["fake"],
                )
            )
            print(f"ready {upstream.url}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
