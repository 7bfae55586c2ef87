"""The built-in ``loopback`` model: echoes the prompt back, with no backend at all.

It exists for smoke tests and for checking a network end to end: every route works, token
counts are real counts of whitespace-separated words, and streaming yields one word a chunk.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._sse import error_body, sse
from .base import Backend, Reply, Request, Usage, single, unsupported

MODEL = "loopback"


class LoopbackBackend(Backend):
    kind = "loopback"

    async def list_models(self) -> list[str]:
        return [MODEL]

    async def healthy(self) -> bool:
        return True

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Reply]:
        if request.route not in self.routes:
            yield unsupported(request, "loopback")
            return
        body = request.body
        model = str(body.get("model") or MODEL)
        if request.route == "embeddings":
            yield _embeddings(body, model)
            return
        prompt = _prompt_text(request)
        if prompt is None:
            yield Reply(
                400,
                "application/json",
                single(
                    error_body(
                        "loopback needs 'messages' (chat) or 'prompt' (completions)",
                        type_="invalid_request_error",
                    )
                ),
            )
            return
        words = prompt.split() or [""]
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(words):
            words, finish = words[:limit], "length"
        usage = Usage(len(prompt.split()), len(words), len(prompt.split()) + len(words))
        if request.stream:
            yield Reply(200, "text/event-stream", _stream(request, model, words, finish, usage), usage)
        else:
            yield Reply(
                200, "application/json", single(_whole(request, model, " ".join(words), finish, usage)), usage
            )


def _prompt_text(request: Request) -> str | None:
    body = request.body
    if request.route == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):  # content parts
                    return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
                return str(c or "")
        return ""
    p = body.get("prompt")
    if isinstance(p, list):
        p = " ".join(map(str, p))
    return None if p is None else str(p)


def _usage_dict(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def _whole(request: Request, model: str, text: str, finish: str, usage: Usage) -> bytes:
    now = int(time.time())
    if request.route == "chat":
        obj: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": now,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage_dict(usage),
        }
    else:
        obj = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": now,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": _usage_dict(usage),
        }
    return json.dumps(obj).encode()


async def _stream(
    request: Request, model: str, words: list[str], finish: str, usage: Usage
) -> AsyncIterator[bytes]:
    now = int(time.time())
    chat = request.route == "chat"
    cid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
    obj_name = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str | None, reason: str | None, role: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if piece is not None:
                delta["content"] = piece
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": reason}
        return sse({"id": cid, "object": obj_name, "created": now, "model": model, "choices": [choice]})

    if chat:
        yield chunk(None, None, role=True)
    for i, w in enumerate(words):
        yield chunk(w if i == 0 else " " + w, None)
        await trio.lowlevel.checkpoint()
    yield chunk(None if chat else "", finish)
    if request.client_usage:
        yield sse(
            {
                "id": cid,
                "object": obj_name,
                "created": now,
                "model": model,
                "choices": [],
                "usage": _usage_dict(usage),
            }
        )


def _embeddings(body: dict[str, Any], model: str) -> Reply:
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        return Reply(
            400,
            "application/json",
            single(error_body("'input' must be a string or a list", type_="invalid_request_error")),
        )
    data = []
    tokens = 0
    for i, text in enumerate(inputs):
        text = str(text)
        tokens += len(text.split())
        digest = hashlib.sha256(text.encode()).digest()
        vec = [v / 2**31 for v in struct.unpack(">8i", digest)]
        data.append({"object": "embedding", "index": i, "embedding": vec})
    usage = Usage(tokens, 0, tokens)
    obj = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Reply(200, "application/json", single(json.dumps(obj).encode()), usage)
