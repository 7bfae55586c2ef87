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

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio

from tooti import _trace

from ._ollama_reply import _dumps, _error_document, _ollama_error, _StreamTranslator
from ._ollama_request import _BadRequest, _encode, _Plan, _plan
from .base import Backend, BackendError, Reply, Request, single, unsupported

__all__ = ["OllamaBackend"]

_HEALTH_TIMEOUT = 2.0
# Closing must finish even when the caller is being cancelled, but never hang on a stuck peer.
_CLOSE_TIMEOUT = 5.0
# After the final line, wait this long for the end of the HTTP body so the connection can be reused.
_DRAIN_TIMEOUT = 1.0
# One NDJSON line longer than this is a broken backend, not a token.
_MAX_LINE = 16 * 1024 * 1024
_JSON = "application/json"
_SSE = "text/event-stream"


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
            except Exception:  # noqa: BLE001 - any failure means not healthy
                return False
            return response.status_code == 200
        return False

    @contextlib.asynccontextmanager
    async def open(self, request: Request) -> AsyncIterator[Reply]:
        if request.route not in self.routes:
            # Ollama's native API has no Responses API and none of the other OpenAI routes.
            yield unsupported(request, "ollama")
            return
        try:
            plan = _plan(request)
            content = _encode(plan.payload)
        except _BadRequest as exc:
            bad: _BadRequest | None = exc
        else:
            bad = None
        if bad is not None:
            yield Reply(400, _JSON, single(_error_document(400, str(bad), param=bad.param)))
            return

        headers = {"Content-Type": _JSON, **self._headers, **_trace.headers()}
        http_request = self._client.build_request(
            "POST", self._url(plan.path), content=content, headers=headers
        )
        try:
            response = await self._client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise _backend_error(f"ollama POST {plan.path} failed", exc) from exc
        exchange = _Exchange(response)
        try:
            yield await exchange.reply(plan, request)
        finally:
            await exchange.aclose()


# -- one HTTP exchange: the backend's answer as a Reply -----------------------------------------


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
            return Reply(status, _JSON, single(_error_document(status, message)))
        if not plan.stream or plan.stream_translator is None:
            body = await self._read_all(plan.path)
            try:
                obj = json.loads(body)
            except ValueError as exc:
                raise BackendError(f"ollama {plan.path}: answer is not JSON") from exc
            if not isinstance(obj, dict) or "error" in obj:
                raise BackendError(f"ollama {plan.path}: {_ollama_error(body) or 'unexpected answer'}")
            document, usage = plan.convert(obj)
            return Reply(200, _JSON, single(_dumps(document)), usage)

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


def _backend_error(message: str, exc: httpx.HTTPError) -> BackendError:
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(
            f"{message}: timed out ({type(exc).__name__})", status=504, code="backend_timeout"
        )
    return BackendError(f"{message}: {exc!r}")
