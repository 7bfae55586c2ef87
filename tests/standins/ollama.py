"""A stand-in for Ollama's native HTTP API, written from Ollama's published API docs (docs/api.md).

Served like Ollama: ``GET /`` ("Ollama is running"), ``GET /api/version``, ``GET /api/tags``,
``POST /api/chat``, ``POST /api/generate`` (NDJSON streams by default, one JSON object with
``"stream": false``) and ``POST /api/embed``. Errors are ``{"error": "..."}`` with Ollama's statuses
(400 bad request, 404 unknown model, 401 when started with an API key and the bearer is wrong).

Deterministic behaviour, so tests can predict every byte:

* chat answers by echoing the words of the last user (or tool) message, one word per token
  (``"a"``, ``" b"``, ...); generate echoes the prompt the same way.
* with ``tools`` in the request and "weather" in the last user message, chat calls the first tool
  with ``{"location": <last word of the message>, "unit": "celsius"}`` (arguments as an object).
* ``options.num_predict = N > 0``: the model rambles until the cap, exactly N tokens (cycling the
  words), ``done_reason: "length"``. ``options.stop``: generation stops before a matching word.
* ``prompt_eval_count`` = words in all messages (or system + prompt, or embed inputs);
  ``eval_count`` = tokens generated (words of the JSON arguments for a tool call).
* embeddings: ``dimensions`` (default 8) floats derived from sha256 of each input, L2-normalised.

Test hooks (not in Ollama):

* request header ``X-Standin-Delay-Ms: n`` sleeps n ms before every token after the first;
* request header ``X-Standin-Fault: drop|malformed|error`` (after ``X-Standin-Fault-After: k``
  lines, default 1) breaks a stream: drop the connection mid-body, send a line that is not JSON, or
  send Ollama's mid-stream ``{"error": ...}`` line;
* ``GET /_last_request`` the last JSON body POSTed to ``/api/*``; ``GET /_last_headers`` its headers;
  ``GET /_last_done`` the last final (``done: true``) object sent;
* ``GET /_stats`` ``{"cancelled": n, "completed": n}`` over chat and generate requests: a
  generation is cancelled when the client disconnects before its last token was produced.

Run as a process: ``python -m tests.standins.ollama --port 11434`` (``--port 0`` picks a free port);
it prints ``listening on http://HOST:PORT`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

__all__ = ["DEFAULT_MODELS", "OllamaStandin", "main", "serve"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

DEFAULT_MODELS = ("llama3.2:latest", "nomic-embed-text:latest")
_DEFAULT_DIMENSIONS = 8
_MAX_BODY = 16 * 1024 * 1024
# Options whose JSON type Ollama checks when it decodes them (others are ignored with a warning).
_FLOAT_OPTIONS = frozenset(
    {"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty"}
)
_INT_OPTIONS = frozenset({"seed", "num_predict", "top_k", "num_ctx", "repeat_last_n"})


class _HTTPError(Exception):
    """Answer the request with Ollama's error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OllamaStandin:
    """The ASGI application. Its attributes are the recorded state the ``/_`` endpoints expose."""

    def __init__(
        self, models: tuple[str, ...] | list[str] = DEFAULT_MODELS, *, api_key: str | None = None
    ) -> None:
        self.models = [_full_name(m) for m in models]
        self.api_key = api_key
        self.last_request: Any = None
        self.last_headers: dict[str, str] = {}
        self.last_done: dict[str, Any] | None = None
        self.stats = {"cancelled": 0, "completed": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except _HTTPError as exc:
            await _send_json(send, exc.status, {"error": exc.message})

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await _read_body(receive)
        gets: dict[str, Callable[[], Any]] = {
            "/api/tags": self._tags,
            "/api/version": lambda: {"version": "0.12.0"},
            "/_last_request": lambda: self.last_request,
            "/_last_headers": lambda: self.last_headers,
            "/_last_done": lambda: self.last_done,
            "/_stats": lambda: dict(self.stats),
        }
        posts = {"/api/chat": self._chat, "/api/generate": self._generate, "/api/embed": self._embed}
        if path == "/" and method in ("GET", "HEAD"):
            await _send(send, 200, b"Ollama is running", b"text/plain; charset=utf-8")
        elif path in gets:
            if method != "GET":
                await _send(send, 405, b"405 method not allowed", b"text/plain")
                return
            if path.startswith("/api/"):
                self._authorize(headers)
            await _send_json(send, 200, gets[path]())
        elif path in posts:
            if method != "POST":
                await _send(send, 405, b"405 method not allowed", b"text/plain")
                return
            self._authorize(headers)
            try:
                payload = json.loads(body) if body else None
            except ValueError as exc:
                raise _HTTPError(400, f"invalid character in request body: {exc}") from exc
            self.last_request, self.last_headers = payload, headers
            if not isinstance(payload, dict):
                raise _HTTPError(400, "missing request body")
            await posts[path](payload, headers, receive, send)
        else:
            await _send(send, 404, b"404 page not found", b"text/plain")

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            raise _HTTPError(401, "unauthorized")

    def _tags(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2026-11-01T12:00:00.000000000Z",
                    "size": 1_000_000 + i,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": name.split(":")[0],
                        "families": [name.split(":")[0]],
                        "parameter_size": "1.2B",
                        "quantization_level": "Q4_0",
                    },
                }
                for i, name in enumerate(self.models)
            ]
        }

    def _model(self, payload: dict[str, Any]) -> str:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise _HTTPError(400, "model is required")
        if _full_name(model) not in self.models:
            raise _HTTPError(404, f'model "{model}" not found, try pulling it first')
        return model

    # -- /api/chat -----------------------------------------------------------------------------

    async def _chat(
        self, payload: dict[str, Any], headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        model = self._model(payload)
        messages = payload.get("messages") or []
        if not isinstance(messages, list):
            raise _HTTPError(400, "json: cannot unmarshal messages into []api.Message")
        for message in messages:
            _check_message(message)
        _check_format(payload.get("format"))
        options = _check_options(payload.get("options"))
        tools = payload.get("tools") or []
        prompt_words = sum(len(str(m.get("content") or "").split()) for m in messages)
        last = next((m for m in reversed(messages) if m.get("role") in ("user", "tool")), {})
        text = str(last.get("content") or "")

        lines: list[dict[str, Any]] = []
        stamp = {"model": model}
        if tools and last.get("role") == "user" and "weather" in text.lower():
            words = [w.strip("?!.,;:'\"") for w in text.split()]
            arguments = {"location": next((w for w in reversed(words) if w), "here"), "unit": "celsius"}
            call = {"function": {"name": tools[0]["function"]["name"], "arguments": arguments}}
            lines.append({**stamp, "message": {"role": "assistant", "content": "", "tool_calls": [call]}})
            eval_count, done_reason = len(json.dumps(arguments).split()), "stop"
        else:
            tokens, done_reason = _tokens(text, options)
            lines = [{**stamp, "message": {"role": "assistant", "content": t}} for t in tokens]
            eval_count = len(tokens)
        final = {
            **stamp,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": done_reason,
        }
        await self._generation(
            payload,
            headers,
            receive,
            send,
            lines,
            final,
            prompt_words=max(prompt_words, 1),
            eval_count=eval_count,
        )

    # -- /api/generate -------------------------------------------------------------------------

    async def _generate(
        self, payload: dict[str, Any], headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        model = self._model(payload)
        prompt = payload.get("prompt") or ""
        if not isinstance(prompt, str):
            raise _HTTPError(400, "json: cannot unmarshal prompt into string")
        _check_format(payload.get("format"))
        options = _check_options(payload.get("options"))
        system = str(payload.get("system") or "")
        tokens, done_reason = _tokens(prompt, options)
        lines = [{"model": model, "response": t} for t in tokens]
        prompt_words = max(len(system.split()) + len(prompt.split()), 1)
        final = {
            "model": model,
            "response": "",
            "done": True,
            "done_reason": done_reason,
            "context": list(range(prompt_words + len(tokens))),
        }
        await self._generation(
            payload, headers, receive, send, lines, final, prompt_words=prompt_words, eval_count=len(tokens)
        )

    async def _generation(
        self,
        payload: dict[str, Any],
        headers: dict[str, str],
        receive: Receive,
        send: Send,
        lines: list[dict[str, Any]],
        final: dict[str, Any],
        *,
        prompt_words: int,
        eval_count: int,
    ) -> None:
        """Produce ``lines`` then ``final`` (streamed or as one object), watching for a disconnect."""
        started = time.monotonic_ns()
        delay = int(headers.get("x-standin-delay-ms", "0") or 0) / 1000
        fault = headers.get("x-standin-fault")
        fault_after = int(headers.get("x-standin-fault-after", "1") or 1)
        streaming = payload.get("stream", True) is not False

        def finish() -> dict[str, Any]:
            elapsed = time.monotonic_ns() - started
            done = {
                **final,
                "created_at": _now(),
                "total_duration": elapsed + 1000,
                "load_duration": 1000,
                "prompt_eval_count": prompt_words,
                "prompt_eval_duration": 500,
                "eval_count": eval_count,
                "eval_duration": max(elapsed, 1),
            }
            self.last_done = done
            return done

        generated = False
        disconnected = False
        faulted = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal disconnected
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        # A disconnect after the last token is the ordinary end of a response.
                        if not generated:
                            disconnected = True
                            nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch)
            try:
                if streaming:
                    await _start(send, 200, b"application/x-ndjson")
                for i, line in enumerate(lines):
                    if delay and i:
                        await trio.sleep(delay)
                    if streaming and fault and i == fault_after:
                        faulted = True
                        break
                    if streaming:
                        await _body(send, _ndjson({**line, "created_at": _now(), "done": False}), more=True)
                if faulted:
                    if fault == "malformed":
                        await _body(send, b'{"model": "broken", "message": {"content": \n', more=True)
                    elif fault == "error":
                        error = {"error": "an error was encountered while running the model"}
                        await _body(send, _ndjson(error), more=True)
                    if fault != "drop":
                        await _body(send, b"", more=False)
                else:
                    generated = True
                    # Counted before the last line leaves, so a client that saw it sees the count.
                    self.stats["completed"] += 1
                    if streaming:
                        await _body(send, _ndjson(finish()), more=True)
                        await _body(send, b"", more=False)
                    else:
                        document = finish()
                        if "message" in document:
                            document["message"] = _merge_messages(lines, document["message"])
                        else:
                            document["response"] = "".join(line["response"] for line in lines)
                        await _send_json(send, 200, document)
            except OSError:
                # The server failed to write: the client is gone.
                disconnected = not generated
            nursery.cancel_scope.cancel()
        # A faulted stream is neither; returning with its body unfinished makes hypercorn close the
        # connection, which is how "drop" drops it.
        if disconnected and not faulted:
            self.stats["cancelled"] += 1

    # -- /api/embed ----------------------------------------------------------------------------

    async def _embed(
        self, payload: dict[str, Any], headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        started = time.monotonic_ns()
        model = self._model(payload)
        raw = payload.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            inputs = raw
        elif raw is None:
            inputs = []
        else:
            raise _HTTPError(400, "invalid input type")
        dimensions = payload.get("dimensions") or _DEFAULT_DIMENSIONS
        if not isinstance(dimensions, int) or dimensions < 1:
            raise _HTTPError(400, "dimensions must be a positive integer")
        document = {
            "model": model,
            "embeddings": [_vector(text, dimensions) for text in inputs],
            "total_duration": time.monotonic_ns() - started + 1000,
            "load_duration": 1000,
            "prompt_eval_count": sum(len(text.split()) for text in inputs),
        }
        await _send_json(send, 200, document)


# -- deterministic model -------------------------------------------------------------------------


def _tokens(text: str, options: dict[str, Any]) -> tuple[list[str], str]:
    """The tokens answering ``text`` under ``options``, and the done_reason."""
    words = text.split() or ["OK"]
    limit = options.get("num_predict")
    stops = set(options.get("stop") or [])
    count = limit if isinstance(limit, int) and limit > 0 else len(words)
    tokens: list[str] = []
    for i in range(count):
        word = words[i % len(words)]
        if word in stops:
            return tokens, "stop"
        tokens.append(word if i == 0 else " " + word)
    return tokens, "length" if isinstance(limit, int) and limit > 0 else "stop"


def _vector(text: str, dimensions: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(b - 127.5) / 127.5 for b in digest[:dimensions]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _merge_messages(lines: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(line["message"]["content"] for line in lines),
    }
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    if calls:
        message["tool_calls"] = calls
    return message


# -- request checks (the decoding errors Ollama reports) -----------------------------------------


def _check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise _HTTPError(400, "json: cannot unmarshal into Go value of type api.Message")
    # Go leaves a string field alone for JSON null, so null is accepted; other types are not.
    if not isinstance(message.get("content") or "", str):
        raise _HTTPError(
            400, "json: cannot unmarshal array into Go struct field Message.messages.content of type string"
        )
    for call in message.get("tool_calls") or []:
        arguments = (call.get("function") or {}).get("arguments")
        if not isinstance(arguments, dict):
            raise _HTTPError(
                400,
                "json: cannot unmarshal string into Go struct field"
                " ToolCallFunction.messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments",
            )


def _check_format(value: Any) -> None:
    if value not in (None, "", "json") and not isinstance(value, dict):
        raise _HTTPError(400, f"invalid format: {json.dumps(value)}")


def _check_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _HTTPError(400, "json: cannot unmarshal options into map[string]any")
    for key, value in options.items():
        if key in _FLOAT_OPTIONS and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise _HTTPError(400, f"option {key!r} must be of type float")
        if key in _INT_OPTIONS and (not isinstance(value, int) or isinstance(value, bool)):
            raise _HTTPError(400, f"option {key!r} must be of type integer")
        if key == "stop" and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            raise _HTTPError(400, "option 'stop' must be of type array of strings")
    return options


def _full_name(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


# -- ASGI plumbing -------------------------------------------------------------------------------


def _ndjson(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise _HTTPError(413, "request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _start(send: Send, status: int, content_type: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
    )


async def _body(send: Send, data: bytes, *, more: bool) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _send(send: Send, status: int, data: bytes, content_type: bytes) -> None:
    await _start(send, status, content_type)
    await _body(send, data, more=False)


async def _send_json(send: Send, status: int, obj: Any) -> None:
    await _send(send, status, json.dumps(obj).encode(), b"application/json; charset=utf-8")


# -- running -------------------------------------------------------------------------------------


async def serve(
    app: OllamaStandin,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; reports the base URL (``http://host:port``) once listening.

    Use it with ``base_url = await nursery.start(partial(serve, app))``.
    """
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, app, config)
        task_status.started(binds[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.standins.ollama", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", help="a model to serve (repeatable)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /api/*")
    args = parser.parse_args(argv)
    app = OllamaStandin(tuple(args.model or DEFAULT_MODELS), api_key=args.api_key)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve, app, host=args.host, port=args.port))
            print(f"listening on {url}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
