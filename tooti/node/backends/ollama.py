"""The Ollama-native adapter: OpenAI-shaped requests in, Ollama's ``/api/*`` on the wire, OpenAI
shapes back (see ``base`` for the contract).

Request mapping (anything not listed is ignored):

* chat → ``POST /api/chat``: ``model``, ``stream``; ``messages`` (``developer`` becomes ``system``;
  content parts become text plus ``images`` from ``data:`` URLs; assistant ``tool_calls`` get their
  JSON-string ``arguments`` decoded to objects; a ``tool`` message gets ``tool_name`` from its
  ``name`` or from the assistant call its ``tool_call_id`` answers); ``tools`` (dropped when
  ``tool_choice`` is ``"none"``); ``response_format`` ``json_object`` → ``format: "json"``,
  ``json_schema`` → ``format: <the schema>``.
* completions → ``POST /api/generate``: ``model``, ``stream``, ``prompt`` (a string or a list of one),
  ``suffix``. Like Ollama's own ``/v1/completions`` the model's template is applied (no ``raw``).
* both: ``options`` from ``temperature``, ``top_p``, ``top_k`` (an extension many clients send),
  ``seed``, ``presence_penalty``, ``frequency_penalty``, ``stop`` (string or list → list), and
  ``max_completion_tokens`` (else ``max_tokens``) → ``num_predict``. ``n`` above 1 is refused (400).
* embeddings → ``POST /api/embed``: ``model``, ``input`` (string or list of strings), ``dimensions``;
  ``encoding_format: "base64"`` is produced here (little-endian float32, as OpenAI does).
* ignored: ``logprobs``, ``top_logprobs``, ``logit_bias``, ``user``, ``parallel_tool_calls``,
  ``tool_choice`` other than ``"none"``, ``stream_options`` (the node passes it as
  ``Request.client_usage``), and every field not named above.

Replies: streams become ``chat.completion.chunk`` / ``text_completion`` SSE events; a tool call's
id is Ollama's when it sends one, else ``call_<n>``; ``finish_reason`` is ``tool_calls`` when a tool
was called, else ``length`` for Ollama's ``done_reason: "length"``, else ``stop``. Usage comes from
``prompt_eval_count`` / ``eval_count``.

Timeouts are the shared client's: its read timeout bounds the wait for the first token and the gap
between tokens, its connect timeout the connection.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import trio

from .base import Backend, BackendError, Reply, Request, Usage

__all__ = ["OllamaBackend"]

_HEALTH_TIMEOUT = 2.0
# Closing must finish even when the caller is being cancelled, but never hang on a stuck peer.
_CLOSE_TIMEOUT = 5.0
# After the final line, wait this long for the end of the HTTP body so the connection can be reused.
_DRAIN_TIMEOUT = 1.0
# One NDJSON line longer than this is a broken backend, not a token.
_MAX_LINE = 16 * 1024 * 1024
_OPTION_FIELDS = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")
_JSON = "application/json"
_SSE = "text/event-stream"


class _BadRequest(Exception):
    """The OpenAI request cannot be expressed for Ollama; answered with a 400, no backend call."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class OllamaBackend(Backend):
    """An Ollama server at ``base_url`` (e.g. ``http://127.0.0.1:11434``), reached with the node's
    shared ``client``; ``api_key`` is sent as a bearer token (for Ollama behind a proxy)."""

    kind = "ollama"

    def __init__(self, base_url: str, client: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _url(self, path: str) -> str:
        return self._base_url + path

    async def list_models(self) -> list[str]:
        try:
            response = await self._client.get(self._url("/api/tags"), headers=self._headers)
        except httpx.HTTPError as exc:
            raise _backend_error(f"ollama at {self._base_url} unreachable", exc) from exc
        if response.status_code != 200:
            raise BackendError(f"ollama GET /api/tags answered {response.status_code}")
        try:
            models = response.json().get("models") or []
            return [str(model["name"]) for model in models]
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise BackendError("ollama GET /api/tags: unexpected body") from exc

    async def healthy(self) -> bool:
        # /api/tags rather than / so that a proxy's authentication is exercised too.
        with trio.move_on_after(_HEALTH_TIMEOUT):
            try:
                response = await self._client.get(
                    self._url("/api/tags"), headers=self._headers, timeout=_HEALTH_TIMEOUT
                )
            except Exception:
                return False
            return response.status_code == 200
        return False

    @contextlib.asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Reply]:
        try:
            plan = _plan(request)
            content = _encode(plan.payload)
        except _BadRequest as exc:
            bad: _BadRequest | None = exc
        else:
            bad = None
        if bad is not None:
            yield Reply(400, _JSON, _once(_error_document(400, str(bad), param=bad.param)))
            return

        headers = {"Content-Type": _JSON, **self._headers}
        http_request = self._client.build_request("POST", self._url(plan.path), content=content, headers=headers)
        try:
            response = await self._client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise _backend_error(f"ollama POST {plan.path} failed", exc) from exc
        exchange = _Exchange(response)
        try:
            yield await exchange.reply(plan, request)
        finally:
            await exchange.aclose()


# -- plans: what to send, and how to turn the answer back into OpenAI shapes ----------------------


@dataclasses.dataclass(slots=True)
class _Plan:
    path: str
    payload: dict[str, Any]
    stream: bool
    #: builds the translator for an NDJSON stream
    stream_translator: Callable[[], _StreamTranslator] | None
    #: turns Ollama's single JSON answer into (OpenAI document, usage)
    convert: Callable[[dict[str, Any]], tuple[dict[str, Any], Usage]]


def _plan(request: Request) -> _Plan:
    body = request.body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required", "model")
    if request.route == "embeddings":
        return _embeddings_plan(body, model)
    n = body.get("n")
    if n is not None and n != 1:
        raise _BadRequest("only n=1 is supported by this backend", "n")
    stream = request.stream
    payload: dict[str, Any] = {"model": model, "stream": stream}
    if request.route == "chat":
        payload["messages"] = _messages(body.get("messages"))
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":
            payload["tools"] = tools
        fmt = _format(body.get("response_format"))
        if fmt is not None:
            payload["format"] = fmt
        path, object_prefix = "/api/chat", "chatcmpl-"
    elif request.route == "completions":
        payload["prompt"] = _prompt(body.get("prompt"))
        if isinstance(body.get("suffix"), str):
            payload["suffix"] = body["suffix"]
        path, object_prefix = "/api/generate", "cmpl-"
    else:
        raise _BadRequest(f"unsupported route {request.route!r}")
    options = _options(body)
    if options:
        payload["options"] = options

    ident = object_prefix + uuid.uuid4().hex
    created = int(time.time())
    if request.route == "chat":
        return _Plan(
            path,
            payload,
            stream,
            lambda: _ChatChunks(ident, created, model, request.client_usage),
            lambda obj: _chat_completion(obj, ident, created, model),
        )
    return _Plan(
        path,
        payload,
        stream,
        lambda: _CompletionChunks(ident, created, model, request.client_usage),
        lambda obj: _text_completion(obj, ident, created, model),
    )


def _embeddings_plan(body: dict[str, Any], model: str) -> _Plan:
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw)):
        payload: dict[str, Any] = {"model": model, "input": raw}
    else:
        raise _BadRequest("'input' must be a string or a non-empty array of strings", "input")
    if body.get("dimensions") is not None:
        payload["dimensions"] = body["dimensions"]
    as_base64 = body.get("encoding_format") == "base64"

    def convert(obj: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
        vectors = obj.get("embeddings")
        if not isinstance(vectors, list):
            raise BackendError("ollama /api/embed answered without 'embeddings'")
        prompt_tokens = _count(obj, "prompt_eval_count")
        usage = Usage(prompt_tokens, 0, prompt_tokens)
        data = [
            {"object": "embedding", "index": i, "embedding": _b64_floats(v) if as_base64 else v}
            for i, v in enumerate(vectors)
        ]
        document = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return document, usage

    return _Plan("/api/embed", payload, False, None, convert)


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array", "messages")
    # A tool result names its call by id; Ollama wants the function's name. The nearest earlier
    # assistant call with that id wins, since ids like call_0 repeat across turns.
    names_by_id: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _BadRequest("each message must be an object", f"messages[{i}]")
        role = message.get("role")
        converted: dict[str, Any] = {"role": "system" if role == "developer" else role}
        text, images = _content(message.get("content"), f"messages[{i}].content")
        converted["content"] = text
        if images:
            converted["images"] = images
        calls = message.get("tool_calls")
        if role == "assistant" and calls:
            converted["tool_calls"] = []
            for j, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise _BadRequest("a tool call needs a 'function'", f"messages[{i}].tool_calls[{j}]")
                name = function.get("name")
                arguments = _arguments(function.get("arguments"), f"messages[{i}].tool_calls[{j}].function.arguments")
                converted["tool_calls"].append({"function": {"name": name, "arguments": arguments}})
                if isinstance(call.get("id"), str) and isinstance(name, str):
                    names_by_id[call["id"]] = name
        if role == "tool":
            name = message.get("name") or names_by_id.get(message.get("tool_call_id", ""))
            if name:
                converted["tool_name"] = name
        out.append(converted)
    return out


def _content(content: Any, param: str) -> tuple[str, list[str]]:
    """OpenAI message content → (text, base64 images)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _BadRequest("content must be a string or an array of parts", param)
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            head, sep, data = url.partition(";base64,")
            if not (head.startswith("data:") and sep):
                raise _BadRequest("images must be given as base64 data: URLs for this backend", param)
            images.append(data)
        else:
            raise _BadRequest(f"content part type {kind!r} is not supported by this backend", param)
    return "\n".join(texts), images


def _arguments(arguments: Any, param: str) -> dict[str, Any]:
    """OpenAI carries tool arguments as a JSON string; Ollama wants the object."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return decoded
    raise _BadRequest("tool call arguments must be a JSON object", param)


def _format(response_format: Any) -> str | dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise _BadRequest("json_schema.schema must be an object", "response_format")
        return schema
    return None


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _BadRequest("'prompt' must be a string (or a list of one string) for this backend", "prompt")
    return prompt


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = {name: body[name] for name in _OPTION_FIELDS if body.get(name) is not None}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list) and stop:
        options["stop"] = stop
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        options["num_predict"] = limit
    return options


# -- replies ------------------------------------------------------------------------------------


class _Exchange:
    """One backend HTTP exchange: builds the Reply and owns everything that must be closed."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._reader: _NDJSONReader | None = None
        self._blocks: Any = None
        self._reply: Reply | None = None

    async def reply(self, plan: _Plan, request: Request) -> Reply:
        response = self._response
        if response.status_code != 200:
            body = await self._read_all(plan.path)
            message = _ollama_error(body) or f"ollama answered {response.status_code}"
            status = response.status_code
            return Reply(status, _JSON, _once(_error_document(status, message)))
        if not plan.stream or plan.stream_translator is None:
            body = await self._read_all(plan.path)
            try:
                obj = json.loads(body)
            except ValueError as exc:
                raise BackendError(f"ollama {plan.path}: answer is not JSON") from exc
            if not isinstance(obj, dict) or "error" in obj:
                raise BackendError(f"ollama {plan.path}: {_ollama_error(body) or 'unexpected answer'}")
            document, usage = plan.convert(obj)
            return Reply(200, _JSON, _once(_dumps(document)), usage)

        # Wait for the first line before replying, so that a backend failing before its first
        # token surfaces as BackendError while the node can still try another peer.
        self._reader = _NDJSONReader(response)
        translator = plan.stream_translator()
        first = await self._reader.next_batch()
        if first is None:
            raise BackendError(f"ollama {plan.path}: stream ended before its first line")
        first_block = translator.feed(first)
        self._blocks = self._stream(translator, first_block)
        self._reply = Reply(200, _SSE, self._blocks, translator.usage)
        return self._reply

    async def _stream(self, translator: _StreamTranslator, first_block: bytes) -> AsyncIterator[bytes]:
        assert self._reader is not None and self._reply is not None
        block = first_block
        while True:
            # Set before the final block leaves, so whoever sees the end also sees the usage.
            self._reply.usage = translator.usage
            if block:
                yield block
            if translator.done:
                break
            batch = await self._reader.next_batch()
            if batch is None:
                raise BackendError("ollama stream ended before its final ('done') line")
            block = translator.feed(batch)
        # Read the body's end so the connection goes back to the pool instead of being closed.
        with trio.move_on_after(_DRAIN_TIMEOUT):
            await self._reader.drain()

    async def _read_all(self, path: str) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise _backend_error(f"ollama {path}: reading the answer failed", exc) from exc

    async def aclose(self) -> None:
        """Close the blocks iterator and the HTTP response (so the backend sees the disconnect)."""
        with trio.move_on_after(_CLOSE_TIMEOUT) as scope:
            scope.shield = True
            if self._blocks is not None:
                await self._blocks.aclose()
            if self._reader is not None:
                await self._reader.aclose()
            await self._response.aclose()


class _NDJSONReader:
    """Parses an NDJSON body read by read, so one network read becomes one batch of objects."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self._buffer = b""
        self._pending_error: BackendError | None = None
        self._eof = False

    async def next_batch(self) -> list[dict[str, Any]] | None:
        """The objects completed by the next read(s): at least one, or None at the end of the body.

        Raises BackendError when the connection fails or a line is not a JSON object; objects
        parsed before a bad line are returned first and the error is raised on the next call.
        """
        if self._pending_error is not None:
            raise self._pending_error
        while not self._eof:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                chunk = b"\n"  # a last line without its newline still counts
            except httpx.HTTPError as exc:
                raise _backend_error("ollama stream broke", exc) from exc
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            if len(self._buffer) > _MAX_LINE:
                raise BackendError("ollama sent an NDJSON line over the size limit")
            batch: list[dict[str, Any]] = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = None
                if not isinstance(obj, dict):
                    self._pending_error = BackendError(f"ollama sent a malformed NDJSON line: {line[:200]!r}")
                    break
                batch.append(obj)
            if batch:
                return batch
            if self._pending_error is not None:
                raise self._pending_error
        return None

    async def drain(self) -> None:
        """Read to the end of the body, ignoring what comes (there should be nothing)."""
        with contextlib.suppress(httpx.HTTPError):
            async for _ in self._chunks:
                pass

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


class _StreamTranslator:
    """Turns batches of Ollama stream objects into one block of OpenAI SSE events."""

    #: the OpenAI ``object`` of every event
    object = ""

    def __init__(self, ident: str, created: int, model: str, client_usage: bool) -> None:
        self._ident = ident
        self._created = created
        self._model = model
        self._client_usage = client_usage
        self.done = False
        self.usage: Usage | None = None

    def feed(self, batch: list[dict[str, Any]]) -> bytes:
        events: list[bytes] = []
        for obj in batch:
            if self.done:
                break  # nothing follows the final line in Ollama's protocol
            if "error" in obj:
                raise BackendError(f"ollama: {obj['error']}")
            events.extend(self._events(obj))
            if obj.get("done"):
                self.done = True
                self.usage = _usage(obj)
                events.append(self._final(obj))
                if self._client_usage:
                    events.append(self._event(self._object(choices=[], usage=_usage_dict(self.usage))))
        return b"".join(events)

    def _events(self, obj: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def _final(self, obj: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _object(self, **fields: Any) -> dict[str, Any]:
        return {"id": self._ident, "object": self.object, "created": self._created, "model": self._model, **fields}

    @staticmethod
    def _event(obj: dict[str, Any]) -> bytes:
        return b"data: " + _dumps(obj) + b"\n\n"


class _ChatChunks(_StreamTranslator):
    object = "chat.completion.chunk"

    def __init__(self, ident: str, created: int, model: str, client_usage: bool) -> None:
        super().__init__(ident, created, model, client_usage)
        self._started = False
        self._tool_calls = 0

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._event(self._object(choices=[choice]))

    def _events(self, obj: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if not self._started:
            self._started = True
            events.append(self._chunk({"role": "assistant", "content": ""}))
        message = obj.get("message") or {}
        delta: dict[str, Any] = {}
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]  # the name llama.cpp and vLLM use
        if message.get("content"):
            delta["content"] = message["content"]
        calls = message.get("tool_calls") or []
        if calls:
            first = self._tool_calls
            delta["tool_calls"] = [_openai_tool_call(call, first + i, with_index=True) for i, call in enumerate(calls)]
            self._tool_calls += len(calls)
        if delta:
            events.append(self._chunk(delta))
        return events

    def _final(self, obj: dict[str, Any]) -> bytes:
        reason = "tool_calls" if self._tool_calls else _finish_reason(obj)
        return self._chunk({}, reason)


class _CompletionChunks(_StreamTranslator):
    object = "text_completion"

    def _choice(self, text: str, finish_reason: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._event(self._object(choices=[choice]))

    def _events(self, obj: dict[str, Any]) -> list[bytes]:
        text = obj.get("response")
        return [self._choice(text, None)] if text else []

    def _final(self, obj: dict[str, Any]) -> bytes:
        return self._choice("", _finish_reason(obj))


def _chat_completion(obj: dict[str, Any], ident: str, created: int, model: str) -> tuple[dict[str, Any], Usage]:
    ollama_message = obj.get("message") or {}
    calls = ollama_message.get("tool_calls") or []
    text = ollama_message.get("content") or ""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if ollama_message.get("thinking"):
        message["reasoning_content"] = ollama_message["thinking"]
    if calls:
        message["tool_calls"] = [_openai_tool_call(call, i, with_index=False) for i, call in enumerate(calls)]
    usage = _usage(obj)
    document = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else _finish_reason(obj),
            }
        ],
        "usage": _usage_dict(usage),
    }
    return document, usage


def _text_completion(obj: dict[str, Any], ident: str, created: int, model: str) -> tuple[dict[str, Any], Usage]:
    usage = _usage(obj)
    document = {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "text": obj.get("response") or "", "logprobs": None, "finish_reason": _finish_reason(obj)}
        ],
        "usage": _usage_dict(usage),
    }
    return document, usage


def _openai_tool_call(call: dict[str, Any], n: int, *, with_index: bool) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    # OpenAI clients expect arguments as a JSON string; Ollama sends the object.
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {})
    out: dict[str, Any] = {
        "id": call.get("id") or f"call_{n}",
        "type": "function",
        "function": {"name": function.get("name", ""), "arguments": encoded},
    }
    return {"index": n, **out} if with_index else out


def _finish_reason(obj: dict[str, Any]) -> str:
    return "length" if obj.get("done_reason") == "length" else "stop"


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _usage(obj: dict[str, Any]) -> Usage:
    # Ollama leaves prompt_eval_count out when the whole prompt came from its cache.
    prompt, completion = _count(obj, "prompt_eval_count"), _count(obj, "eval_count")
    return Usage(prompt, completion, prompt + completion)


def _usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _ollama_error(body: bytes) -> str | None:
    """The message of Ollama's ``{"error": "..."}``, or the body as text."""
    try:
        obj = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:1000] or None
    if isinstance(obj, dict) and obj.get("error") is not None:
        error = obj["error"]
        return error if isinstance(error, str) else json.dumps(error)
    return None


_ERROR_CODES = {
    400: "invalid_request",
    401: "backend_unauthorized",
    403: "backend_forbidden",
    404: "model_not_found",  # Ollama's only 404 on these routes is an unknown model
    413: "request_too_large",
    429: "rate_limit_exceeded",
}


def _error_document(status: int, message: str, *, param: str | None = None) -> bytes:
    error = {
        "message": message,
        "type": "invalid_request_error" if 400 <= status < 500 else "server_error",
        "param": param,
        "code": _ERROR_CODES.get(status, "backend_error"),
    }
    return _dumps({"error": error})


def _backend_error(message: str, exc: httpx.HTTPError) -> BackendError:
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"{message}: timed out ({type(exc).__name__})", status=504, code="backend_timeout")
    return BackendError(f"{message}: {exc!r}")


def _b64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _encode(payload: dict[str, Any]) -> bytes:
    # Python's json accepts NaN and Infinity, so a client body may hold them; JSON (and Go) do not.
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError as exc:
        raise _BadRequest(f"the request holds a number JSON cannot carry: {exc}") from exc


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data

