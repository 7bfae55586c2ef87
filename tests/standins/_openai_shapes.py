"""The OpenAI side of the fake upstream: request plans, answer shapes and SSE byte templates.

No I/O here: ``openai_upstream`` (the HTTP server) asks this module what to answer and which
bytes each stream event is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from typing import Any

EMBED_DIMS = 8
DONE_EVENT = b"data: [DONE]\n\n"
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "unprocessable_entity_error",
    429: "rate_limit_error",
}


@dataclasses.dataclass
class Config:
    """Server-wide defaults; every field but ``models`` can be overridden per request via x_fake."""

    tokens: int = 16
    delay_ms: float = 0.0
    ttft_ms: float = 0.0
    models: list[str] = dataclasses.field(default_factory=lambda: ["fake"])
    #: tokens per HTTP chunk when streaming; 1 is how llama.cpp, vLLM and SGLang stream
    batch: int = 1


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
    batch: int


def completion_id(chat: bool) -> str:
    """A fresh ``chatcmpl-...`` / ``cmpl-...`` id."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{_ID_PREFIX}{next(_ids):012x}"


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI error document for ``status``."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json_bytes({"error": {"message": message, "type": kind, "param": param, "code": code}})


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


def prompt_tokens(path: str, body: dict[str, Any]) -> int:
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


def make_plan(config: Config, path: str, body: dict[str, Any]) -> Plan:
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
        prompt_tokens=prompt_tokens(path, body),
        batch=max(1, int(_number(fake, "batch", config.batch, integer=True))),
    )


def usage(plan: Plan) -> dict[str, int]:
    """The CompletionUsage object of a finished request."""
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.tokens,
        "total_tokens": plan.prompt_tokens + plan.tokens,
    }


def text(n: int) -> str:
    """The whole answer of ``n`` tokens."""
    return "".join([f"tok{i} " for i in range(n)])


def embedding(item: Any) -> list[float]:
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
        rid = completion_id(chat)
        kind = "chat.completion.chunk" if chat else "text_completion"
        self.base = {"id": rid, "object": kind, "created": int(time.time()), "model": plan.model}
        self.usage_null = b',"usage":null' if plan.include_usage else b""
        head = json_bytes(self.base)[:-1]  # without the closing brace
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
        return b"data: " + json_bytes(doc) + b"\n\n"

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
            out += self._event([], usage=usage(self.plan))
        return out + DONE_EVENT


def check_required(path: str, body: dict[str, Any]) -> None:
    """The minimal request validation OpenAI does too; raises ValueError."""
    if path == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
        raise ValueError("'messages' is a required array")
    if path == "/v1/completions" and "prompt" not in body:
        raise ValueError("'prompt' is required")
    if path == "/v1/embeddings":
        items = body.get("input")
        if not isinstance(items, (str, list)) or (isinstance(items, list) and not items):
            raise ValueError("'input' must be a string or a non-empty array")
