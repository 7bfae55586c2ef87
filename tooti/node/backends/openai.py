"""OpenAI-compatible backends: vLLM, llama.cpp server, SGLang, LM Studio, ...

The client's body is sent as-is (every field: tools, response_format, seed, ...), with only
``model`` set to the backend's name and, when the gateway wants usage for its ledger,
``stream_options.include_usage`` turned on. A usage chunk the client did not ask for is
recorded and dropped from the stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tooti import _trace
from tooti.openai_shapes import error_json

from ._sse import DONE, EventSplitter, inspect_event, usage_from
from .base import Backend, BackendError, Reply, Request, single, unsupported

_PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
}
# Answers of passthrough routes are relayed as the backend sent them, up to this size.
_PASSTHROUGH_MAX = 32 * 1024 * 1024


class OpenAIBackend(Backend):
    """Relays every route: the OpenAI-compatible server answers (or refuses) it itself."""

    kind = "openai"
    routes = frozenset({"chat", "completions", "embeddings", "responses", "passthrough"})

    def __init__(self, base_url: str, client: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        base = base_url.rstrip("/")
        # Accept both "http://host:port" and "http://host:port/v1".
        self._base = base[:-3] if base.endswith("/v1") else base
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def list_models(self) -> list[str]:
        try:
            r = await self._client.get(self._base + "/v1/models", headers=self._headers)
            r.raise_for_status()
            data = r.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise BackendError(f"cannot list models at {self._base}: {type(exc).__name__}") from None
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def healthy(self) -> bool:
        try:
            r = await self._client.get(self._base + "/v1/models", headers=self._headers, timeout=2.0)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    @asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Reply]:
        if request.route not in self.routes:
            yield unsupported(request, self.kind)
            return
        path = request.path if request.route == "passthrough" else _PATHS[request.route]
        url = self._base + path
        content = json.dumps(request.body, separators=(",", ":")).encode()
        headers = {**self._headers, "Content-Type": "application/json", **_trace.headers()}
        method = request.method if request.route == "passthrough" else "POST"
        try:
            response = await self._client.send(
                self._client.build_request(method, url, content=content, headers=headers), stream=True
            )
        except httpx.HTTPError as exc:
            raise BackendError(f"backend unreachable: {type(exc).__name__}") from None
        try:
            if response.status_code != 200:
                yield await _error_reply(response)
            elif request.route == "passthrough" and not request.stream:
                yield await _raw_reply(response)
            elif request.stream and response.headers.get("content-type", "").startswith("text/event-stream"):
                reply = Reply(200, "text/event-stream", single(b""))
                # The generator records usage on the reply it belongs to as it sees it.
                reply.blocks = _stream_blocks(response, request, reply)
                yield reply
            else:
                yield await _whole_reply(response, request.route)
        finally:
            await response.aclose()


async def _error_reply(response: httpx.Response) -> Reply:
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        raise BackendError(f"backend failed: {type(exc).__name__}") from None
    # Backends disagree on error shapes (llama.cpp sends an integer code, some send text);
    # clients get OpenAI's shape with the backend's message, type, param and code kept when
    # they are strings (an integer code such as llama.cpp's only repeats the status).
    message, type_ = f"backend returned HTTP {response.status_code}", None
    param = code = None
    try:
        doc = json.loads(raw)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            type_ = err["type"] if isinstance(err.get("type"), str) else None
            param = err["param"] if isinstance(err.get("param"), str) else None
            code = err["code"] if isinstance(err.get("code"), str) else None
        elif isinstance(err, str):
            message = err
        elif isinstance(doc, dict) and isinstance(doc.get("detail"), str):
            message = doc["detail"]
    except (ValueError, UnicodeDecodeError):
        message = f"{message}: {raw.decode(errors='replace')[:300]}"
    status = response.status_code
    return Reply(
        status, "application/json", single(error_json(status, message, code=code, param=param, type_=type_))
    )


async def _raw_reply(response: httpx.Response) -> Reply:
    """A passthrough route's answer, bytes and content type as the backend sent them."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > _PASSTHROUGH_MAX:
                raise BackendError("backend answer too large", status=502, code="response_too_large")
            parts.append(chunk)
    except httpx.HTTPError as exc:
        raise BackendError(f"backend failed: {type(exc).__name__}") from None
    content_type = response.headers.get("content-type", "application/json")
    return Reply(200, content_type, single(b"".join(parts)))


async def _whole_reply(response: httpx.Response, route: str) -> Reply:
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        raise BackendError(f"backend failed: {type(exc).__name__}") from None
    try:
        obj = json.loads(raw)
    except ValueError:
        raise BackendError("backend returned invalid JSON") from None
    usage = usage_from(obj) if isinstance(obj, dict) else None
    if route == "chat" and isinstance(obj, dict) and _complete_chat(obj):
        raw = json.dumps(obj, separators=(",", ":")).encode()
    return Reply(200, "application/json", single(raw), usage)


def _complete_chat(obj: dict[str, Any]) -> bool:
    """Add the fields OpenAI always sends and some servers omit (llama.cpp leaves out
    ``logprobs`` and ``refusal``), so SDKs and schema validators see OpenAI's shape.
    Returns whether anything was added."""
    changed = False
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict):
            if "logprobs" not in choice:
                choice["logprobs"] = None
                changed = True
            msg = choice.get("message")
            if isinstance(msg, dict) and "refusal" not in msg:
                msg["refusal"] = None
                changed = True
    return changed


async def _stream_blocks(response: httpx.Response, request: Request, reply: Reply) -> AsyncIterator[bytes]:
    """Yield complete SSE events, coalescing everything one read delivered into one block."""
    splitter = EventSplitter()
    try:
        async for chunk in response.aiter_bytes():
            out: list[bytes] = []
            for event in splitter.feed(chunk):
                if event.startswith(DONE):
                    continue
                usage, usage_only = inspect_event(event)
                if usage is not None:
                    reply.usage = usage
                if usage_only and not request.client_usage:
                    continue
                out.append(event + b"\n\n")
            if out:
                yield b"".join(out)
    except httpx.HTTPError as exc:
        raise BackendError(f"backend stream broke: {type(exc).__name__}") from None
    if splitter.pending.strip() and not splitter.pending.startswith(DONE):
        raise BackendError("backend stream ended inside an event")
