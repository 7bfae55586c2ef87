"""Dispatching a request: a call -> an open exchange (or a whole answer) from some node.

The one place that resolves a model name, takes a slot through admission, chooses a node and
tries another while the client has seen nothing — the gateway's only retry loop.

What counts as a node failure (cool-down, ``failures`` in /v1/network/nodes): the node or the
path to it broke (unreachable, reset, truncated, malformed, silent past a timeout) or it
reported a server-side failure before answering. Never: the client hanging up, the client's
request being refused by the backend (4xx), the node being busy.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable

import trio

from tooti._trace import valid_traceparent
from tooti.config import AdmissionSection
from tooti.openai_shapes import ROUTE_NAMES
from tooti.wire import pb

from .admission import Admission, QueueFull, QueueTimeout
from .errors import HTTPError
from .metrics import GatewayMetrics
from .registry import NodeEntry, Registry
from .relay import Exchange, NodeFailure, StreamPool, start_exchange
from .router import record_failure, record_success
from .upstream_status import error_from_answer

log = logging.getLogger("tooti.gateway")

_BUSY_HOLD = 1.0  # seconds a node that answered "busy" is taken as full
_ERROR_BODY_LIMIT = 64 * 1024  # an error answer longer than this is a broken node


class Outcome(enum.Enum):
    OK = "ok"  # the exchange ended with its end frame
    CLIENT_GONE = "client_gone"  # the client hung up (499): never the node's fault
    NODE_FAILED = "node_failed"  # the node or the path broke, or went silent
    GATEWAY_LIMIT = "gateway_limit"  # the gateway's own limit ended it (deadline, size)


@dataclasses.dataclass(slots=True)
class Call:
    """One client request as the dispatcher needs it."""

    route: int
    method: str
    path: str
    body: bytes
    model_ref: str
    request_id: str
    caller: str = ""  # fairness identity (the API key)
    priority: int = 0
    allowed_namespaces: set[str] | None = None
    want_usage: bool = True
    deadline: float = 0.0  # monotonic; 0: total_timeout from now
    traceparent: str = ""  # the client's W3C traceparent header, unchecked


@dataclasses.dataclass(slots=True)
class Opened:
    exchange: Exchange
    entry: NodeEntry
    namespace: str
    model: str
    path: str = ""


@dataclasses.dataclass(slots=True)
class Whole:
    """A non-streamed answer, read to its end frame."""

    head: pb.ResponseHead
    body: bytes
    end: pb.ResponseEnd | None
    entry: NodeEntry
    namespace: str
    model: str


class ResponseTooLarge(Exception):
    pass


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        pool: StreamPool,
        *,
        max_attempts: int,
        first_token_timeout: float,
        total_timeout: float,
        known_namespaces: Callable[[], set[str]] = set,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self.max_attempts = max_attempts
        self.first_token_timeout = first_token_timeout
        self.total_timeout = total_timeout
        self.idle_timeout = first_token_timeout
        self._known_namespaces = known_namespaces
        self.metrics = GatewayMetrics(registry)
        defaults = AdmissionSection()
        self.admission = Admission(
            timeout=defaults.queue_timeout_sec,
            max_queued=defaults.max_queued,
            max_queued_per_key=defaults.max_queued_per_key,
        )

    def configure(self, admission: AdmissionSection, *, idle_timeout: float) -> None:
        """Apply the config's admission and idle-timeout settings (before serving)."""
        self.admission = Admission(
            timeout=admission.queue_timeout_sec,
            max_queued=admission.max_queued,
            max_queued_per_key=admission.max_queued_per_key,
        )
        self.idle_timeout = idle_timeout

    def resolve(self, model_ref: str) -> tuple[str | None, str]:
        """Split ``namespace:model``, treating the prefix as a namespace only when it is one
        this gateway knows — Ollama names such as ``llama3.2:1b`` contain colons themselves."""
        ns, sep, rest = model_ref.partition(":")
        if sep and rest and (ns in self._registry.namespaces() or ns in self._known_namespaces()):
            return ns, rest
        return None, model_ref

    async def open(self, call: Call) -> Opened:
        """An exchange whose head said 200, for the caller to relay and then ``finish``.

        Raises HTTPError: 404 for a model nothing ever served, 503 (+Retry-After) when it is
        known but has no live node or every node stayed busy past the queue deadline, 429 when
        the caller's queue share is full, 403 outside the key's scope, 502 when every attempt
        failed, 504 when no first byte came in time, and the backend's own error (mapped) when
        it refused the request."""
        opened, _ = await self._attempts(call, whole_limit=None)
        return opened

    async def whole(self, call: Call, *, max_bytes: int) -> Whole:
        """A non-streamed answer read whole (at most ``max_bytes``; above it 502 and the node's
        request is cancelled). A node failing mid-answer is retried like one failing before its
        head, since the client has seen nothing yet."""
        _, whole = await self._attempts(call, whole_limit=max_bytes)
        assert whole is not None
        return whole

    async def finish(self, opened: Opened, outcome: Outcome) -> None:
        """Close an exchange from ``open`` and account for it on the node's entry."""
        self.admission.release(opened.entry)
        if outcome is Outcome.OK:
            record_success(opened.entry)
        elif outcome is Outcome.NODE_FAILED:
            record_failure(opened.entry)
        await opened.exchange.close()

    # -- the loop ---------------------------------------------------------------------------

    def _candidates(self, model: str, scope: set[str] | None, call: Call) -> list[NodeEntry]:
        """Nodes serving ``model`` whose backend relays the call's route: as they declare it,
        and not refused by them for this path before."""
        route = ROUTE_NAMES.get(call.route, "")
        return [
            e
            for e in self._registry.serving(model, scope)
            if route in e.routes and call.path not in e.unsupported
        ]

    def _targets(self, call: Call) -> tuple[str | None, str, set[str] | None]:
        namespace, model = self.resolve(call.model_ref)
        allowed = call.allowed_namespaces
        if namespace is not None and allowed is not None and namespace not in allowed:
            raise HTTPError(
                403, f"this key may not use namespace '{namespace}'", code="permission_denied", param="model"
            )
        scope = {namespace} if namespace is not None else allowed
        if not self._registry.serving(model, scope):
            if (
                self._registry.known(model, scope)
                or (namespace is not None and namespace in self._known_namespaces())
                or self._registry.learning()
            ):
                raise HTTPError(
                    503,
                    f"no node serving '{call.model_ref}' is online right now; retry shortly",
                    code="model_unavailable",
                    param="model",
                    headers={"Retry-After": "2"},
                )
            raise HTTPError(
                404,
                f"The model '{call.model_ref}' does not exist or no node serves it",
                code="model_not_found",
                param="model",
            )
        return namespace, model, scope

    async def _attempts(self, call: Call, *, whole_limit: int | None) -> tuple[Opened, Whole | None]:
        _, model, scope = self._targets(call)
        deadline = call.deadline or time.monotonic() + self.total_timeout
        request = pb.InferenceRequest(
            request_id=call.request_id,
            route=call.route,  # type: ignore[arg-type]  # protobuf's enum stubs take the named type
            body=call.body,
            model=model,
            deadline_unix_ms=int((time.time() + max(0.0, deadline - time.monotonic())) * 1000),
            want_usage=call.want_usage,
            method=call.method,
            path=call.path,
            traceparent=valid_traceparent(call.traceparent),
        )
        tried: set[str] = set()
        failures = attempts = 0
        refusal: HTTPError | None = None  # the last node's "cannot serve this" answer
        admission = self.admission
        while True:
            candidates = self._candidates(model, scope, call)
            if refusal is not None and all(e.peer_id in tried for e in candidates):
                raise refusal  # every node was asked and none can serve it
            if not candidates and self._registry.serving(model, scope):
                raise _unsupported(call)  # every node serving it is known to lack the route
            try:
                entry = await admission.acquire(
                    call.caller,
                    call.model_ref,
                    lambda: self._candidates(model, scope, call),
                    tried,
                    priority=call.priority,
                    deadline=min(deadline, time.monotonic() + admission.timeout),
                )
            except QueueFull as exc:
                if exc.per_key:
                    raise HTTPError(
                        429,
                        "too many of this key's requests are waiting for a node; retry shortly",
                        code="rate_limit_exceeded",
                        headers={"Retry-After": "1"},
                    ) from None
                raise _no_capacity(call.model_ref) from None
            except QueueTimeout:
                if tried and failures:
                    break
                raise _no_capacity(call.model_ref) from None
            tried.add(entry.peer_id)
            if attempts:
                self.metrics.retried()
            attempts += 1
            sent = time.monotonic()
            try:
                ex = await start_exchange(
                    self._pool,
                    entry.peer_id,
                    request,
                    first_byte_timeout=max(0.001, min(self.first_token_timeout, deadline - time.monotonic())),
                    idle_timeout=self.idle_timeout,
                )
            except NodeFailure as exc:
                admission.release(entry)
                record_failure(entry)
                failures += 1
                self.metrics.node_failure("before_head", entry.peer_id)
                log.warning(
                    "request %s: node %s failed before its first byte (%s)",
                    call.request_id,
                    entry.peer_id,
                    exc,
                )
                if failures >= self.max_attempts:
                    break
                continue
            except trio.TooSlowError:
                admission.release(entry)
                record_failure(entry)
                self.metrics.node_failure("timeout", entry.peer_id)
                raise HTTPError(504, "the node did not answer in time", code="timeout") from None
            except BaseException:
                admission.release(entry)
                raise
            opened = Opened(ex, entry, entry.namespace, model, call.path)
            if ex.head.status == 200:
                # Only answers that start work: a "busy" or a refusal comes back at once and
                # would make a full node look like the fastest.
                entry.observe_ttft((time.monotonic() - sent) * 1000)
            else:
                retry = await self._refused(opened)
                self.metrics.refused(entry.peer_id, retry)
                if retry == "busy":
                    tried.discard(entry.peer_id)  # busy is not failed: it may have room later
                if isinstance(retry, HTTPError):
                    raise retry
                if isinstance(retry, tuple):
                    refusal = retry[1]
                continue
            if whole_limit is None:
                self.metrics.served(failures)
                return opened, None
            try:
                whole = await self._read_whole(opened, whole_limit)
                self.metrics.served(failures)
                return opened, whole
            except NodeFailure as exc:
                failures += 1
                self.metrics.node_failure("mid_answer", entry.peer_id)
                log.warning("request %s: node %s failed mid-answer: %s", call.request_id, entry.peer_id, exc)
                if failures >= self.max_attempts:
                    break
        raise HTTPError(
            502, f"no node could serve '{call.model_ref}' (tried {len(tried)})", code="node_failure"
        )

    async def _refused(self, opened: Opened) -> HTTPError | str | tuple[str, HTTPError]:
        """A head other than 200: "busy" (re-queue), ("elsewhere", error to give if no node
        is left) or the error the client gets. Finishes the exchange either way."""
        ex, entry = opened.exchange, opened.entry
        chunks: list[bytes] = []
        size = 0
        try:
            async for block in ex.data():
                chunks.append(block)
                size += len(block)
                if size > _ERROR_BODY_LIMIT:
                    raise NodeFailure("error answer too long")
        except (NodeFailure, trio.TooSlowError) as exc:
            await self.finish(opened, Outcome.NODE_FAILED)
            log.warning("node %s broke while refusing a request: %s", entry.peer_id, exc)
            return "elsewhere", HTTPError(502, "the node failed while answering", code="node_failure")
        end = ex.end
        error = end.error if end is not None and end.HasField("error") else None
        if error is not None and error.code == "busy":
            entry.saturated_until = time.monotonic() + _BUSY_HOLD
            await self.finish(opened, Outcome.GATEWAY_LIMIT)
            return "busy"
        mapped = error_from_answer(ex.head, b"".join(chunks), error)
        if error is not None and error.code == "model_not_found":
            # Its model list changed since its last heartbeat; another node may serve it.
            await self.finish(opened, Outcome.GATEWAY_LIMIT)
            return "elsewhere", mapped
        if mapped.code == "unsupported_route" or _code_of(chunks) == "unsupported_route":
            # Its backend lacks the route: remember, and try a node whose backend has it.
            entry.unsupported.add(opened.path)
            await self.finish(opened, Outcome.GATEWAY_LIMIT)
            return "elsewhere", mapped
        # A refusal of the client's request (4xx) says nothing about the node's health.
        outcome = Outcome.NODE_FAILED if mapped.status >= 500 else Outcome.OK
        await self.finish(opened, outcome)
        return mapped

    async def _read_whole(self, opened: Opened, limit: int) -> Whole:
        ex = opened.exchange
        chunks: list[bytes] = []
        size = 0
        outcome = Outcome.NODE_FAILED
        try:
            async for block in ex.data():
                size += len(block)
                if size > limit:
                    outcome = Outcome.GATEWAY_LIMIT
                    raise HTTPError(
                        502, f"the node's answer exceeds {limit} bytes", code="response_too_large"
                    )
                chunks.append(block)
            outcome = Outcome.OK
        except trio.TooSlowError:
            raise HTTPError(504, "the node stopped answering", code="timeout") from None
        except BaseException as exc:
            if not isinstance(exc, NodeFailure | HTTPError):
                outcome = Outcome.CLIENT_GONE  # cancelled: the client left or the deadline hit
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self.finish(opened, outcome)
        return Whole(ex.head, b"".join(chunks), ex.end, opened.entry, opened.namespace, opened.model)


def _unsupported(call: Call) -> HTTPError:
    return HTTPError(
        501,
        f"no node serving '{call.model_ref}' has a backend that serves {call.method} {call.path}",
        code="unsupported_route",
    )


def _code_of(chunks: list[bytes]) -> str | None:
    """The ``error.code`` of an adapter's error document (cheap: only when it is short)."""
    raw = b"".join(chunks)
    if b"unsupported_route" not in raw:
        return None
    return "unsupported_route"


def _no_capacity(model_ref: str) -> HTTPError:
    return HTTPError(
        503,
        f"every node serving '{model_ref}' is at capacity; retry shortly",
        code="no_capacity",
        headers={"Retry-After": "1"},
    )
