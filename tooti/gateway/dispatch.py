"""Dispatching a request: (route, body, model) -> an open exchange with some node.

The one place that resolves a model name, chooses a node and retries on another while the
client has seen nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import trio

from tooti._trace import valid_traceparent
from tooti.wire import pb

from .errors import HTTPError
from .metrics import GatewayMetrics
from .registry import NodeEntry, Registry
from .relay import Exchange, NodeFailure, StreamPool, start_exchange
from .router import choose, record_failure, record_success

log = logging.getLogger("tooti.gateway")


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
        self._known_namespaces = known_namespaces
        self.metrics = GatewayMetrics(registry)

    def resolve(self, model_ref: str) -> tuple[str | None, str]:
        """Split ``namespace:model``, treating the prefix as a namespace only when it is one
        this gateway knows — Ollama names such as ``llama3.2:1b`` contain colons themselves."""
        ns, sep, rest = model_ref.partition(":")
        if sep and rest and (ns in self._registry.namespaces() or ns in self._known_namespaces()):
            return ns, rest
        return None, model_ref

    async def dispatch(
        self,
        route: int,
        body: bytes,
        model_ref: str,
        *,
        allowed_namespaces: set[str] | None = None,
        request_id: str | None = None,
        want_usage: bool = True,
        tried: set[str] | None = None,
        traceparent: str = "",
    ) -> tuple[Exchange, NodeEntry, str, str]:
        """Open an exchange with the best node for ``model_ref``.

        Returns (exchange, node entry, namespace or "", backend model name). The caller must
        ``finish(...)`` it. Raises HTTPError 404 when no live node serves the model, 503 with
        Retry-After when all are busy, 502 when every attempt failed, 504 when the first
        byte does not come in time. ``tried`` collects the nodes attempted (pass the same set
        again to retry elsewhere after a failure the client has not seen).
        """
        namespace, model = self.resolve(model_ref)
        scope = {namespace} if namespace is not None else allowed_namespaces
        if namespace is not None and allowed_namespaces is not None and namespace not in allowed_namespaces:
            raise HTTPError(403, f"this key may not use namespace '{namespace}'", code="permission_denied")
        candidates = self._registry.serving(model, scope)
        if not candidates:
            raise HTTPError(
                404,
                f"The model '{model_ref}' does not exist or no node serves it",
                code="model_not_found",
                param="model",
            )
        request = pb.InferenceRequest(
            request_id=request_id or uuid.uuid4().hex,
            route=route,  # type: ignore[arg-type]
            body=body,
            model=model,
            deadline_unix_ms=int((time.time() + self.total_timeout) * 1000),
            want_usage=want_usage,
            traceparent=valid_traceparent(traceparent),
        )
        tried = set() if tried is None else tried
        busy = attempts = 0
        for _ in range(self.max_attempts):
            entry = choose(candidates, tried)
            if entry is None:
                break
            attempts += 1
            if tried:
                self.metrics.retried()
            tried.add(entry.peer_id)
            entry.local_in_flight += 1
            try:
                ex = await start_exchange(
                    self._pool,
                    entry.peer_id,
                    request,
                    first_byte_timeout=self.first_token_timeout,
                    idle_timeout=self.first_token_timeout,
                )
            except NodeFailure as exc:
                entry.local_in_flight -= 1
                record_failure(entry)
                self.metrics.node_failure("before_head", entry.peer_id)
                log.warning(
                    "request %s: node %s failed before its first byte (%s); trying another",
                    request.request_id,
                    entry.peer_id,
                    exc,
                )
                continue
            except trio.TooSlowError:
                entry.local_in_flight -= 1
                record_failure(entry)
                self.metrics.node_failure("timeout", entry.peer_id)
                raise HTTPError(504, "the node did not answer in time", code="timeout") from None
            except BaseException:
                entry.local_in_flight -= 1
                raise
            if ex.head.status != 200:
                entry.local_in_flight -= 1
                error = await _error_answer(ex)
                self.metrics.node_error(entry.peer_id, error.status, error.code)
                if error.code in ("busy", "model_not_found"):
                    # Refused before doing any work: safe to try another node.
                    busy += error.code == "busy"
                    continue
                raise error
            if len(tried) > 1:
                self.metrics.failed_over()
            return ex, entry, entry.namespace, model
        if busy or not attempts:
            raise HTTPError(
                503,
                f"every node serving '{model_ref}' is at capacity; retry shortly",
                code="no_capacity",
                headers={"Retry-After": "1"},
            )
        raise HTTPError(502, f"no node could serve '{model_ref}' (tried {len(tried)})", code="node_failure")

    async def finish(self, ex: Exchange, entry: NodeEntry, *, ok: bool) -> None:
        """Close an exchange returned by dispatch and account for it on the node's entry."""
        entry.local_in_flight = max(0, entry.local_in_flight - 1)
        if ok:
            record_success(entry)
        elif ex.end is None:
            record_failure(entry)
        await ex.close()


async def _error_answer(ex: Exchange) -> HTTPError:
    """Read a non-200 answer to its end and turn it into the error the client should see:
    the node's own error, or the backend's error body passed through with its status."""
    chunks: list[bytes] = []
    try:
        async for block in ex.data():
            chunks.append(block)
    except (NodeFailure, trio.TooSlowError):
        await ex.close()
        return HTTPError(502, "the node failed while answering", code="node_failure")
    await ex.close()
    if ex.end is not None and ex.end.HasField("error"):
        e = ex.end.error
        return HTTPError(e.status or ex.head.status, e.message, code=e.code or None)
    err = HTTPError(ex.head.status, "backend error", code="backend_error")
    err.raw_body = b"".join(chunks)
    return err
