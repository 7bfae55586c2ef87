"""OpenAI-compatible backends: vLLM, llama.cpp server, SGLang, LM Studio, ...

The client's body is sent as-is (every field: tools, response_format, seed, ...), with only
``model`` set to the backend's name and, when the gateway wants usage for its ledger,
``stream_options.include_usage`` turned on. A usage chunk the client did not ask for is
recorded and dropped from the stream.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tooti import _trace
from tooti.openai_shapes import error_json

from ._h1 import H1Error, H1Pool, H1TooLarge, Response
from ._sse import DONE, EventSplitter, relay_block, usage_from
from .base import Backend, BackendError, Reply, Request, single, unsupported

_PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
}
# Answers of passthrough routes are relayed as the backend sent them, up to this size.
_PASSTHROUGH_MAX = 32 * 1024 * 1024
# Bounds on what the node holds of one answer: a JSON document (twice the gateway's default
# max_response_bytes, so a gateway allowed more still gets big embedding answers), one SSE event
# (a Responses API ``response.completed`` event repeats the whole answer), an error body (only
# its message is kept).
_DOCUMENT_MAX = 64 * 1024 * 1024
_EVENT_MAX = 32 * 1024 * 1024
_ERROR_MAX = 1024 * 1024


class OpenAIBackend(Backend):
    """Relays every route: the OpenAI-compatible server answers (or refuses) it itself.

    Requests go over tooti's lean HTTP/1.1 client (``_h1``), with the time limits of
    ``client.timeout`` (connect, and read: for the answer's head and for any silence of its
    body); ``list_models`` and ``healthy`` use ``client`` itself.
    """

    kind = "openai"
    routes = frozenset({"chat", "completions", "embeddings", "responses", "passthrough"})

    def __init__(self, base_url: str, client: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        base = base_url.rstrip("/")
        # Accept both "http://host:port" and "http://host:port/v1".
        self._base = base[:-3] if base.endswith("/v1") else base
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = client.timeout
        self._pool = H1Pool(
            self._base,
            connect_timeout=_limit(timeout.connect),
            head_timeout=_limit(timeout.read),
            idle_timeout=_limit(timeout.read),
        )
        # What httpx sent (less its compression and keep-alive defaults): credentials in the URL
        # win over the API key, as with httpx's auth from the URL.
        auth = self._pool.basic_auth or self._headers.get("Authorization")
        self._fixed = [
            ("Host", self._pool.host_header),
            ("Accept", "*/*"),
            ("Accept-Encoding", "identity"),  # the body is relayed and parsed as it comes
            ("User-Agent", "tooti-node"),
            ("Content-Type", "application/json"),
            *((("Authorization", auth),) if auth else ()),
        ]

    async def list_models(self) -> list[str]:
        self._pool.sweep()  # also called periodically: idle connections past their keep-alive go
        try:
            r = await self._client.get(self._base + "/v1/models", headers=self._headers)
            r.raise_for_status()
            data = r.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise BackendError(f"cannot list models at {self._base}: {type(exc).__name__}") from None
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def healthy(self) -> bool:
        self._pool.sweep()
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
        content = json.dumps(request.body, separators=(",", ":")).encode()
        headers = [*self._fixed, *_trace.headers().items()]
        method = request.method if request.route == "passthrough" else "POST"
        doing = "unreachable"
        try:
            async with self._pool.request(
                method, self._pool.path_prefix + path, headers, content
            ) as response:
                doing = "failed"
                content_type = response.header(b"content-type") or ""
                if response.status != 200:
                    reply = await _error_reply(response)
                elif request.route == "passthrough" and not request.stream:
                    reply = Reply(
                        200, content_type or "application/json", single(await response.read(_PASSTHROUGH_MAX))
                    )
                elif request.stream and content_type.startswith("text/event-stream"):
                    reply = Reply(200, "text/event-stream", single(b""))
                    # The generator records usage on the reply it belongs to as it sees it.
                    reply.blocks = _stream_blocks(response, request, reply)
                    doing = "stream broke"
                else:
                    reply = await _whole_reply(response, request.route)
                yield reply
        except H1TooLarge:
            raise BackendError("backend answer too large", status=502, code="response_too_large") from None
        except H1Error as exc:
            raise BackendError(f"backend {doing}: {exc}") from None

    async def aclose(self) -> None:
        self._pool.close()


def _limit(seconds: float | None) -> float:
    return math.inf if seconds is None else seconds


async def _error_reply(response: Response) -> Reply:
    try:
        raw = await response.read(_ERROR_MAX)
    except H1TooLarge:
        raw = b""  # the status says enough
    # Backends disagree on error shapes (llama.cpp sends an integer code, some send text);
    # clients get OpenAI's shape with the backend's message, type, param and code kept when
    # they are strings (an integer code such as llama.cpp's only repeats the status).
    message, type_ = f"backend returned HTTP {response.status}", None
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
        if raw:
            message = f"{message}: {raw.decode(errors='replace')[:300]}"
    status = response.status
    return Reply(
        status, "application/json", single(error_json(status, message, code=code, param=param, type_=type_))
    )


async def _whole_reply(response: Response, route: str) -> Reply:
    raw = await response.read(_DOCUMENT_MAX)
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


async def _stream_blocks(response: Response, request: Request, reply: Reply) -> AsyncIterator[bytes]:
    """Yield complete SSE events: one block per read that completed any (see ``relay_block``)."""
    splitter = EventSplitter()
    feed, receive, client_usage = splitter.feed, response.receive, request.client_usage
    try:
        while chunk := await receive():
            block = feed(chunk)
            if splitter.pending_size > _EVENT_MAX:
                raise BackendError("backend sent an SSE event too large", code="response_too_large")
            if block:
                block, usage = relay_block(block, client_usage)
                if usage is not None:
                    reply.usage = usage
                if block:
                    yield block
    except H1Error as exc:
        raise BackendError(f"backend stream broke: {exc}") from None
    pending = splitter.pending
    if pending.strip() and not pending.startswith(DONE):
        raise BackendError("backend stream ended inside an event")
