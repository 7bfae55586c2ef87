"""A fast, fault-injecting fake OpenAI-compatible upstream for tests and benchmarks.

Pure trio on raw sockets (``trio.serve_tcp``) with a small HTTP/1.1 server of its own, so that it is
never the bottleneck of a benchmark: no framework, constant response pieces encoded once, and stream
chunks built from per-request byte templates with only the token index substituted.

Run as a process::

    python -m tests.standins.openai_upstream --port N [--host 127.0.0.1] [--tokens 16]
        [--delay-ms 0] [--ttft-ms 0] [--model fake [--model other ...]]

It prints ``ready http://HOST:PORT`` on stdout (flushed) once listening (``--port 0`` picks a free
port). In-process: ``upstream = await nursery.start(functools.partial(serve, 0, tokens=4))`` gives a
:class:`FakeUpstream` (``.url``, ``.port``, ``.stats``).

Endpoints (OpenAI shapes; errors are ``{"error": {"message", "type", "param": null, "code"}}``):

* ``GET /v1/models`` - the configured model ids; ``GET /health`` - ``{"status": "ok"}``.
* ``POST /v1/chat/completions``, ``POST /v1/completions`` - ``stream`` true or false. The answer is
  ``"tok0 tok1 ... tok{n-1} "`` (one token per stream chunk). ``n`` is the configured token count,
  capped by ``max_tokens`` / ``max_completion_tokens``; finish_reason is ``"length"`` when the cap cut
  it short, else ``"stop"``. The model echoed is the request's ``model`` (or the first configured one).
* ``POST /v1/embeddings`` - 8 floats per input, derived from sha256 of the input, L2-normalised
  (``encoding_format: "base64"`` gives little-endian float32 in base64).
* usage: ``prompt_tokens`` = whitespace-separated words over all message contents (text parts too),
  the prompt(s), or the embedding inputs (a token-id array counts its length);
  ``completion_tokens`` = tokens produced.

Timing: ``ttft_ms`` is slept after the stream's head and role chunk and before the first content
chunk; ``delay_ms`` is slept between content chunks (on a drift-free schedule). A non-streaming
answer is sent after the whole simulated generation, ``ttft_ms + (n - 1) * delay_ms``. With a delay
of 0 the tokens are written in batches (still one SSE event per token) as fast as the socket takes
them.

Per-request overrides, in the request body's extra object ``"x_fake"`` (checked in this order:
``fail: "before_head"``, then ``status``, then the normal answer; bad values get a 400):

* ``tokens`` (int), ``delay_ms`` (float), ``ttft_ms`` (float) - override the server defaults;
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

HTTP: keep-alive (HTTP/1.1 by default, 1.0 with ``Connection: keep-alive``), pipelining, request
bodies by ``Content-Length`` only (a ``Transfer-Encoding`` request gets 411 and a close),
``Expect: 100-continue``. JSON answers carry ``Content-Length``; streams use chunked encoding (a
HTTP/1.0 client gets a close-delimited stream). A peer that half-closes its side during a stream is
taken as gone.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

__all__ = ["Config", "FakeUpstream", "Stats", "main", "serve"]

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
RECV_SIZE = 65536
BATCH_TOKENS = 256
EMBED_DIMS = 8
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "unprocessable_entity_error",
    429: "rate_limit_error",
}
_STREAM_HEAD_CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_STREAM_HEAD_CLOSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"connection: close\r\n\r\n"
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_DONE_EVENT = b"data: [DONE]\n\n"
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


class BadRequest(Exception):
    """The request cannot be parsed as HTTP/1.1; answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InjectedClose(Exception):
    """Raised by a handler to drop the connection on purpose (an ``x_fake.fail`` fault)."""


@dataclasses.dataclass
class Config:
    """Server-wide defaults; every field but ``models`` can be overridden per request via x_fake."""

    tokens: int = 16
    delay_ms: float = 0.0
    ttft_ms: float = 0.0
    models: list[str] = dataclasses.field(default_factory=lambda: ["fake"])


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
    """One parsed HTTP request: method, path (without query), lower-cased headers, raw body."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclasses.dataclass
class Plan:
    """What one inference request asked for, after x_fake, max_tokens and the defaults are applied."""

    tokens: int
    finish_reason: str
    delay: float
    ttft: float
    fail: str | None
    fail_after: int
    status: int | None
    stream: bool
    include_usage: bool
    model: str
    prompt_tokens: int


# --------------------------------------------------------------------------------------- HTTP bits


def _json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _response(status: int, body: bytes, *, close: bool = False) -> bytes:
    """A whole HTTP/1.1 response with ``Content-Length`` (and ``Connection: close`` if ``close``)."""
    reason = _REASONS.get(status, "Status").encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        len(body),
    )
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def _error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI error document for ``status``."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return _json_bytes({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _error(
    status: int, message: str, *, close: bool = False, code: str | None = None, param: str | None = None
) -> bytes:
    """A whole HTTP response carrying an OpenAI error document."""
    return _response(status, _error_body(status, message, code=code, param=param), close=close)


def _chunk(payload: bytes) -> bytes:
    """``payload`` framed as one HTTP/1.1 chunk (it must not be empty)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers of ``head`` (without the blank line); repeated headers are joined
    with ", ". Raises :class:`BadRequest` on malformed input."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505, f"unsupported HTTP version {version!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    path = target.split("?", 1)[0]
    return method, path, version, headers


def _wants_keep_alive(version: str, headers: dict[str, str]) -> bool:
    """Whether the connection stays open after this exchange (RFC 9112 section 9.3)."""
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


class Connection:
    """One client connection: a receive buffer and the stream; single reader, single writer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        """Wrap ``stream``; nothing is read yet."""
        self.stream = stream
        self.buf = bytearray()
        self.peer_gone = False

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; False at EOF or on a reset."""
        try:
            data = await self.stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.peer_gone = True
            return False
        self.buf += data
        return True

    async def read_request(self) -> Request | None:
        """The next request, or None when the peer closed cleanly between requests.

        Raises :class:`BadRequest` for input that is not an acceptable HTTP/1.1 request."""
        start = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", start)
            if end >= 0:
                break
            if len(self.buf) > MAX_HEAD:
                raise BadRequest(431, "request head too large")
            start = max(0, len(self.buf) - 3)
            if not await self._fill():
                if self.buf.strip():
                    raise BadRequest(400, "connection closed inside the request head")
                return None
        head = bytes(self.buf[:end]).lstrip(b"\r\n")
        del self.buf[: end + 4]
        method, path, version, headers = _parse_head(head)
        if "transfer-encoding" in headers:
            raise BadRequest(411, "request bodies must have a Content-Length (no Transfer-Encoding)")
        length = 0
        if "content-length" in headers:
            raw = headers["content-length"]
            if not raw.isdigit():
                raise BadRequest(400, "invalid Content-Length")
            length = int(raw)
            if length > MAX_BODY:
                raise BadRequest(413, "request body too large")
        if length and headers.get("expect", "").lower() == "100-continue" and len(self.buf) < length:
            await self.stream.send_all(_CONTINUE)
        while len(self.buf) < length:
            if not await self._fill():
                return None
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return Request(method, path, version, headers, body, _wants_keep_alive(version, headers))

    async def watch(self, cancel_scope: trio.CancelScope) -> None:
        """Until cancelled: read (and keep, for pipelining) whatever the peer sends; at EOF or reset
        mark the peer gone and cancel ``cancel_scope``."""
        while True:
            if len(self.buf) > MAX_HEAD + MAX_BODY or not await self._fill():
                self.peer_gone = True
                cancel_scope.cancel()
                return


# ---------------------------------------------------------------------------------- OpenAI helpers


def _count_words(value: Any) -> int:
    """Whitespace-separated words in a string, a list of content parts, or a list of prompts;
    a list of integers (token ids) counts its length."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return len(value["text"].split())
        return 0
    return 0


def _prompt_tokens(path: str, body: dict[str, Any]) -> int:
    """The usage ``prompt_tokens`` of a request body for ``path``."""
    if path == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        return sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))
    if path == "/v1/completions":
        return _count_words(body.get("prompt"))
    return _count_words(body.get("input"))


def _number(obj: dict[str, Any], key: str, default: float, *, integer: bool = False) -> float:
    """``obj[key]`` as a non-negative number (an int if ``integer``), else ``default``.
    Raises ValueError for a present value of the wrong type."""
    if key not in obj or obj[key] is None:
        return default
    value = obj[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise ValueError(f"x_fake.{key} must be a {'integer' if integer else 'number'}")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"x_fake.{key} must be >= 0")
    return value


def _plan(config: Config, path: str, body: dict[str, Any]) -> Plan:
    """Merge the defaults, x_fake and the OpenAI request fields. Raises ValueError when invalid."""
    fake = body.get("x_fake") or {}
    if not isinstance(fake, dict):
        raise ValueError("x_fake must be an object")
    tokens = int(_number(fake, "tokens", config.tokens, integer=True))
    cap: Any = body.get("max_completion_tokens", body.get("max_tokens"))
    finish = "stop"
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError("max_tokens must be a non-negative integer")
        if cap < tokens:
            tokens, finish = cap, "length"
    fail = fake.get("fail")
    if fail not in (None, "before_head", "after_tokens"):
        raise ValueError("x_fake.fail must be 'before_head' or 'after_tokens'")
    status = fake.get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599
    ):
        raise ValueError("x_fake.status must be an integer in 400..599")
    options = body.get("stream_options")
    model = body.get("model")
    return Plan(
        tokens=tokens,
        finish_reason=finish,
        delay=_number(fake, "delay_ms", config.delay_ms) / 1000.0,
        ttft=_number(fake, "ttft_ms", config.ttft_ms) / 1000.0,
        fail=fail,
        fail_after=int(_number(fake, "fail_after", 1, integer=True)),
        status=status,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        model=model if isinstance(model, str) and model else config.models[0],
        prompt_tokens=_prompt_tokens(path, body),
    )


def _usage(plan: Plan) -> dict[str, int]:
    """The CompletionUsage object of a finished request."""
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.tokens,
        "total_tokens": plan.prompt_tokens + plan.tokens,
    }


def _text(n: int) -> str:
    """The whole answer of ``n`` tokens."""
    return "".join([f"tok{i} " for i in range(n)])


def _embedding(item: Any) -> list[float]:
    """A deterministic, L2-normalised vector of EMBED_DIMS floats for one input."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBED_DIMS]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


class StreamTemplate:
    """Byte templates of one stream's SSE events; ``token(i)`` costs one int format and a join."""

    def __init__(self, plan: Plan, chat: bool) -> None:
        """Encode the constant parts of every event of the stream described by ``plan``."""
        self.plan = plan
        self.chat = chat
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{_ID_PREFIX}{next(_ids):012x}"
        kind = "chat.completion.chunk" if chat else "text_completion"
        self.base = {"id": rid, "object": kind, "created": int(time.time()), "model": plan.model}
        self.usage_null = b',"usage":null' if plan.include_usage else b""
        head = _json_bytes(self.base)[:-1]  # without the closing brace
        if chat:
            self.prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":"tok'
            self.suffix = b' "},"logprobs":null,"finish_reason":null}]' + self.usage_null + b"}\n\n"
        else:
            self.prefix = b"data: " + head + b',"choices":[{"index":0,"text":"tok'
            self.suffix = b' ","logprobs":null,"finish_reason":null}]' + self.usage_null + b"}\n\n"

    def _event(self, choices: list[dict[str, Any]], *, usage: Any = ...) -> bytes:
        """One ``data:`` event of the base object with ``choices`` (and ``usage`` if given)."""
        doc = dict(self.base, choices=choices)
        if usage is not ...:
            doc["usage"] = usage
        elif self.plan.include_usage:
            doc["usage"] = None
        return b"data: " + _json_bytes(doc) + b"\n\n"

    def first(self) -> bytes:
        """The role chunk of a chat stream (nothing for completions)."""
        if not self.chat:
            return b""
        delta = {"role": "assistant", "content": ""}
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def token(self, i: int) -> bytes:
        """The event carrying content token ``i``."""
        return self.prefix + b"%d" % i + self.suffix

    def tokens(self, start: int, stop: int) -> bytes:
        """The events of tokens ``start`` up to (not including) ``stop``, concatenated."""
        prefix, suffix = self.prefix, self.suffix
        return b"".join([prefix + b"%d" % i + suffix for i in range(start, stop)])

    def last(self) -> bytes:
        """The finish chunk, the usage chunk when asked for, and ``[DONE]``."""
        reason = self.plan.finish_reason
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}
        out = self._event([choice])
        if self.plan.include_usage:
            out += self._event([], usage=_usage(self.plan))
        return out + _DONE_EVENT


# ---------------------------------------------------------------------------------------- server


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
        self._models_body = _json_bytes(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "tooti-fake"}
                    for m in self.config.models
                ],
            }
        )
        self._models_response = _response(200, self._models_body)
        self._health_response = _response(200, b'{"status":"ok"}')
        self._routes: dict[tuple[str, str], Callable[[Connection, Request], Any]] = {
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
                    await stream.send_all(_error(e.status, e.message, close=True))
                    return
                if request is None:
                    return
                route = self._routes.get((request.method, request.path))
                if route is None:
                    keep = await self._no_route(conn, request)
                else:
                    keep = await route(conn, request)
                if not keep or conn.peer_gone:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, InjectedClose):
            pass
        except Exception as e:  # a bug here must not take the whole server down
            print(f"openai_upstream: connection error: {e!r}", file=sys.stderr, flush=True)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    # ---- small routes: each answers and returns whether the connection stays open

    async def _send(self, conn: Connection, request: Request, data: bytes) -> bool:
        """Send a whole pre-built response; True if the connection is kept."""
        await conn.stream.send_all(data)
        return request.keep_alive

    async def _json(self, conn: Connection, request: Request, status: int, obj: Any) -> bool:
        """Send ``obj`` as JSON with ``status``."""
        return await self._send(
            conn, request, _response(status, _json_bytes(obj), close=not request.keep_alive)
        )

    async def _no_route(self, conn: Connection, request: Request) -> bool:
        """404 for an unknown path, 405 for a known path with the wrong method."""
        close = not request.keep_alive
        if any(path == request.path for _, path in self._routes):
            return await self._send(
                conn, request, _error(405, f"method {request.method} not allowed", close=close)
            )
        return await self._send(conn, request, _error(404, f"unknown path {request.path}", close=close))

    async def _models(self, conn: Connection, request: Request) -> bool:
        """GET /v1/models."""
        if request.keep_alive:
            return await self._send(conn, request, self._models_response)
        return await self._send(conn, request, _response(200, self._models_body, close=True))

    async def _health(self, conn: Connection, request: Request) -> bool:
        """GET /health."""
        if request.keep_alive:
            return await self._send(conn, request, self._health_response)
        return await self._json(conn, request, 200, {"status": "ok"})

    async def _stats(self, conn: Connection, request: Request) -> bool:
        """GET /_stats."""
        return await self._json(conn, request, 200, self.stats_dict())

    async def _reset(self, conn: Connection, request: Request) -> bool:
        """POST /_reset: zero the counters (not ``active``) and forget the last request."""
        self.stats.reset()
        self.last_request = None
        self.started = time.monotonic()
        return await self._json(conn, request, 200, self.stats_dict())

    async def _last(self, conn: Connection, request: Request) -> bool:
        """GET /_last_request."""
        last = self.last_request
        if last is None:
            error = _error(404, "no inference request yet", close=not request.keep_alive)
            return await self._send(conn, request, error)
        raw = last.body.decode("utf-8", "replace")
        try:
            body: Any = json.loads(last.body)
        except ValueError:
            body = None
        doc = {"method": last.method, "path": last.path, "headers": last.headers, "body": body, "raw": raw}
        return await self._json(conn, request, 200, doc)

    # ---- inference

    async def _inference(self, conn: Connection, request: Request) -> bool:
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
            return False
        if outcome == "failed":
            stats.failed += 1
            raise InjectedClose()
        if outcome == "error":
            stats.errors += 1
        else:
            stats.completed += 1
        return request.keep_alive

    async def _answer(self, conn: Connection, request: Request) -> str:
        """Answer an inference request; returns "completed", "error", "failed" (the connection must
        be dropped now) or "cancelled" (the peer went away)."""
        close = not request.keep_alive
        try:
            body = json.loads(request.body)
        except ValueError:
            await conn.stream.send_all(_error(400, "the body is not valid JSON", close=close))
            return "error"
        if not isinstance(body, dict):
            await conn.stream.send_all(_error(400, "the body must be a JSON object", close=close))
            return "error"
        try:
            plan = _plan(self.config, request.path, body)
            _check_required(request.path, body)
        except ValueError as e:
            await conn.stream.send_all(_error(400, str(e), close=close))
            return "error"
        if plan.fail == "before_head":
            return "failed"
        if plan.status is not None:
            message = f"injected status {plan.status}"
            await conn.stream.send_all(_error(plan.status, message, close=close, code=f"fake_{plan.status}"))
            return "error"
        if request.path == "/v1/embeddings":
            return await self._embeddings(conn, request, body, plan)
        if plan.stream:
            return await self._stream(conn, request, plan)
        return await self._whole(conn, request, plan)

    async def _embeddings(self, conn: Connection, request: Request, body: dict[str, Any], plan: Plan) -> str:
        """POST /v1/embeddings (ttft_ms is slept before answering)."""
        items = body["input"]
        if isinstance(items, str) or (
            isinstance(items, list) and items and all(isinstance(v, int) for v in items)
        ):
            items = [items]
        data = []
        b64 = body.get("encoding_format") == "base64"
        for i, item in enumerate(items):
            vector: Any = _embedding(item)
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
        await conn.stream.send_all(_response(200, _json_bytes(doc), close=not request.keep_alive))
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
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{_ID_PREFIX}{next(_ids):012x}"
        text = _text(plan.tokens)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": plan.finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": plan.finish_reason}
        doc = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": plan.model,
            "choices": [choice],
            "usage": _usage(plan),
        }
        data = _response(200, _json_bytes(doc), close=not request.keep_alive)
        wait = plan.ttft + plan.delay * max(plan.tokens - 1, 0)
        if wait > 0 and not await self._sleep_watching(conn, wait):
            return "cancelled"
        if plan.fail == "after_tokens":
            await conn.stream.send_all(data[: len(data) - len(data) // 4])
            return "failed"
        await conn.stream.send_all(data)
        self.stats.tokens_sent += plan.tokens
        return "completed"

    async def _stream(self, conn: Connection, request: Request, plan: Plan) -> str:
        """A streamed completion; the socket is watched for EOF while it runs."""
        outcome = "cancelled"  # stays so if the watcher cancels the body
        if request.version != "HTTP/1.1":
            request.keep_alive = False  # a close-delimited stream: the close ends the body
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.watch, nursery.cancel_scope)
            try:
                outcome = await self._stream_body(conn, request, plan)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                outcome = "cancelled"
            nursery.cancel_scope.cancel()
        return outcome

    async def _stream_body(self, conn: Connection, request: Request, plan: Plan) -> str:
        """Write the stream of ``plan``; returns "completed" or "failed" (drop the connection)."""
        chat = request.path == "/v1/chat/completions"
        chunked = request.version == "HTTP/1.1"
        frame: Callable[[bytes], bytes] = _chunk if chunked else (lambda payload: payload)
        send = conn.stream.send_all
        stats = self.stats
        template = StreamTemplate(plan, chat)
        limit = plan.tokens
        if plan.fail == "after_tokens":
            limit = min(plan.fail_after, plan.tokens)
        head = _STREAM_HEAD_CHUNKED if chunked else _STREAM_HEAD_CLOSE
        first = template.first()
        await send(head + frame(first) if first else head)
        if plan.ttft:
            await trio.sleep(plan.ttft)
        if plan.delay <= 0:
            for start in range(0, limit, BATCH_TOKENS):
                stop = min(start + BATCH_TOKENS, limit)
                await send(frame(template.tokens(start, stop)))
                stats.tokens_sent += stop - start
        else:
            begin = trio.current_time()
            for i in range(limit):
                if i:
                    await trio.sleep_until(begin + i * plan.delay)
                await send(frame(template.token(i)))
                stats.tokens_sent += 1
        if plan.fail == "after_tokens":
            return "failed"
        tail = frame(template.last())
        await send(tail + _LAST_CHUNK if chunked else tail)
        return "completed"


def _check_required(path: str, body: dict[str, Any]) -> None:
    """The minimal request validation OpenAI does too; raises ValueError."""
    if path == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
        raise ValueError("'messages' is a required array")
    if path == "/v1/completions" and "prompt" not in body:
        raise ValueError("'prompt' is required")
    if path == "/v1/embeddings":
        items = body.get("input")
        if not isinstance(items, (str, list)) or (isinstance(items, list) and not items):
            raise ValueError("'input' must be a string or a non-empty array")


# ------------------------------------------------------------------------------------ entry points


def _config(defaults: dict[str, Any]) -> Config:
    """A Config from serve()'s keyword defaults (tokens, delay_ms, ttft_ms, model/models)."""
    known = {"tokens", "delay_ms", "ttft_ms", "model", "models"}
    unknown = set(defaults) - known
    if unknown:
        raise TypeError(f"unknown defaults: {sorted(unknown)}")
    models: Iterable[str] | str = defaults.get("models", defaults.get("model", "fake"))
    model_list = [models] if isinstance(models, str) else list(models)
    if not model_list:
        model_list = ["fake"]
    return Config(
        tokens=int(defaults.get("tokens", 16)),
        delay_ms=float(defaults.get("delay_ms", 0.0)),
        ttft_ms=float(defaults.get("ttft_ms", 0.0)),
        models=model_list,
    )


async def serve(
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED,
    **defaults: Any,
) -> None:
    """Listen on ``host:port`` (0 = a free port) and serve until cancelled.

    ``defaults`` are ``tokens``, ``delay_ms``, ``ttft_ms`` and ``model`` (a string or a list;
    ``models`` is accepted too). Reports the running :class:`FakeUpstream` through ``task_status``
    once listening; its ``url`` has the actual port."""
    upstream = FakeUpstream(_config(defaults))
    async with trio.open_nursery() as nursery:
        start = functools.partial(trio.serve_tcp, upstream.handle, port, host=host, backlog=4096)
        listeners = await nursery.start(start)
        upstream.host = host
        upstream.port = listeners[0].socket.getsockname()[1]
        task_status.started(upstream)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.standins.openai_upstream", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="sleep between tokens (default 0)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="sleep before the first token (default 0)")
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
