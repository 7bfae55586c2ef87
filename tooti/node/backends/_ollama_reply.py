"""Ollama answers → OpenAI shapes, for the Ollama adapter (:mod:`.ollama`).

Pure translation, no I/O: stream translators that turn batches of Ollama NDJSON
objects into OpenAI SSE events (``chat.completion.chunk`` / ``text_completion``),
converters for Ollama's single JSON answers, usage and ``finish_reason``
mapping, and OpenAI-shaped error documents.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from .base import BackendError, Usage


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
        return {
            "id": self._ident,
            "object": self.object,
            "created": self._created,
            "model": self._model,
            **fields,
        }

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
            delta["tool_calls"] = [
                _openai_tool_call(call, first + i, with_index=True) for i, call in enumerate(calls)
            ]
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


def _chat_completion(
    obj: dict[str, Any], ident: str, created: int, model: str
) -> tuple[dict[str, Any], Usage]:
    ollama_message = obj.get("message") or {}
    calls = ollama_message.get("tool_calls") or []
    text = ollama_message.get("content") or ""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
    }
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


def _text_completion(
    obj: dict[str, Any], ident: str, created: int, model: str
) -> tuple[dict[str, Any], Usage]:
    usage = _usage(obj)
    document = {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": obj.get("response") or "",
                "logprobs": None,
                "finish_reason": _finish_reason(obj),
            }
        ],
        "usage": _usage_dict(usage),
    }
    return document, usage


def _openai_tool_call(call: dict[str, Any], n: int, *, with_index: bool) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    # OpenAI clients expect arguments as a JSON string; Ollama sends the object.
    encoded = (
        arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {})
    )
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
    """The message of Ollama's ``{"error": "..."}`` (or ``{"error": {"message": ...}}``), or the
    body as text; never a JSON document stringified into the message."""
    try:
        obj = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:1000] or None
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, str):
        return error[:1000] or None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:1000] or None
    return None


_ERROR_CODES = {
    400: "invalid_request",
    401: "backend_unauthorized",
    403: "backend_forbidden",
    413: "request_too_large",
    429: "rate_limit_exceeded",
}


def _error_code(status: int, message: str) -> str:
    """The OpenAI-style code for an Ollama error. A 404 is ``model_not_found`` only when
    Ollama says so (``model "x" not found``); an unknown route is a plain ``not_found``."""
    if status == 404:
        lowered = message.lower()
        return "model_not_found" if "model" in lowered and "not found" in lowered else "not_found"
    return _ERROR_CODES.get(status, "backend_error")


def _error_document(status: int, message: str, *, param: str | None = None) -> bytes:
    code = _error_code(status, message)
    error = {
        "message": message,
        "type": "invalid_request_error" if 400 <= status < 500 else "server_error",
        "param": param if param is not None else ("model" if code == "model_not_found" else None),
        "code": code,
    }
    return _dumps({"error": error})


def _b64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
