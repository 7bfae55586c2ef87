"""OpenAI requests → Ollama ``/api/*`` requests, for the Ollama adapter (:mod:`.ollama`).

Pure translation, no I/O: :func:`_plan` checks an OpenAI-shaped request and
returns a :class:`_Plan` saying which Ollama path to call with which payload and
how to translate the answer back (see :mod:`._ollama_reply`).  A request that
cannot be expressed for Ollama raises :class:`_BadRequest`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from ._ollama_reply import (
    _b64_floats,
    _chat_completion,
    _ChatChunks,
    _CompletionChunks,
    _count,
    _StreamTranslator,
    _text_completion,
)
from .base import BackendError, Request, Usage

_OPTION_FIELDS = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")


class _BadRequest(Exception):
    """The OpenAI request cannot be expressed for Ollama; answered with a 400, no backend call."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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
                arguments = _arguments(
                    function.get("arguments"), f"messages[{i}].tool_calls[{j}].function.arguments"
                )
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


def _encode(payload: dict[str, Any]) -> bytes:
    # Python's json accepts NaN and Infinity, so a client body may hold them; JSON (and Go) do not.
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError as exc:
        raise _BadRequest(f"the request holds a number JSON cannot carry: {exc}") from exc
