"""The contract every backend adapter fulfils.

A backend turns one OpenAI-shaped request (route + JSON body, already parsed by the node)
into a :class:`Reply`: an HTTP status, a content type, and the body as an async iterator of
byte blocks that the node forwards as data frames without looking inside them.

Contract for ``Reply.blocks``:

* Streaming (``body["stream"]`` is true and status is 200): each block holds one or more
  *complete* OpenAI SSE events (``b"data: {...}\\n\\n"``). The terminating
  ``data: [DONE]`` event is never yielded: the gateway writes it, so that a truncated stream
  can never look finished. Usage is not yielded as an event unless ``Request.client_usage``
  is true; the adapter always records it in ``Reply.usage`` when the backend reports it.
* Non-streaming: the blocks concatenate to one OpenAI JSON document; ``Reply.usage`` is set
  from it.
* Status != 200: the blocks concatenate to an OpenAI error JSON document.

An adapter raises :class:`BackendError` when the backend cannot be reached or breaks the
protocol before a reply starts; a failure while iterating ``blocks`` propagates as
``BackendError`` too. Cancellation (the client left) must close the backend request.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from tooti.openai_shapes import error_json

#: "responses" is OpenAI's Responses API; "passthrough" any other route, by method and path.
RouteName = Literal["chat", "completions", "embeddings", "responses", "passthrough"]


class BackendError(Exception):
    """The backend failed: unreachable, timed out, or broke its protocol."""

    def __init__(self, message: str, *, status: int = 502, code: str = "backend_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclasses.dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclasses.dataclass(slots=True)
class Request:
    """One inference request as the node hands it to an adapter.

    ``body`` is the client's JSON object with ``model`` already set to the backend's model
    name. ``client_usage`` says whether the client itself asked for a usage chunk.
    """

    route: RouteName
    body: dict[str, Any]
    client_usage: bool = False
    method: str = "POST"
    path: str = ""  # the client's path, e.g. "/v1/rerank" (what "passthrough" relays to)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclasses.dataclass(slots=True)
class Reply:
    status: int
    content_type: str
    blocks: AsyncIterator[bytes]
    usage: Usage | None = None


async def single(raw: bytes) -> AsyncIterator[bytes]:
    """``Reply.blocks`` for a body that is already whole (JSON answers and errors)."""
    yield raw


def unsupported(request: Request, kind: str) -> Reply:
    """The answer for a route an adapter cannot relay: 501 in OpenAI's error shape."""
    what = request.path or request.route
    return Reply(
        501,
        "application/json",
        single(
            error_json(
                501,
                f"this node's backend ({kind}) does not serve {request.method} {what}",
                code="unsupported_route",
            )
        ),
    )


class Backend(abc.ABC):
    """A local inference server the node relays to. One instance per node process."""

    #: short name used in configs and logs: "openai", "ollama", "loopback"
    kind: str = ""

    @abc.abstractmethod
    async def list_models(self) -> list[str]:
        """The model names the backend serves right now. Raises BackendError when unreachable."""

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """True when the backend answers; never raises."""

    #: the routes this adapter can relay; others are answered 501 ``unsupported_route``
    routes: frozenset[str] = frozenset({"chat", "completions", "embeddings"})

    @abc.abstractmethod
    def open(self, request: Request) -> AbstractAsyncContextManager[Reply]:
        """Start the request. Leaving the context closes the backend request (cancelling it
        when the reply was not consumed)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections. Default: nothing to release."""
