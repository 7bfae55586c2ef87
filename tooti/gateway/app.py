"""The gateway's HTTP face: OpenAI's routes, served by the lean ASGI layer in ``http/``.

This module is the seam the wiring uses: :func:`create_app` and the :class:`Accounts`
protocol the HTTP layer needs from the accounts layer (None means open mode).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from tooti.config import GatewayConfig

from .admin_http import AdminAccess, OperatorRoutes
from .errors import error_body
from .http.asgi import EdgeApp
from .http.infer import Limits

if TYPE_CHECKING:
    from .core import Gateway


class Accounts(Protocol):
    """What the app needs from the accounts layer (auth + usage)."""

    async def authenticate(self, authorization: str | None, x_api_key: str | None) -> Any: ...
    def scope(self, key: Any) -> set[str] | None: ...
    def check(self, key: Any, namespace: str, model: str) -> None: ...
    def record(
        self,
        *,
        request_id: str,
        client_request_id: str,
        key: Any,
        namespace: str,
        node_peer_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
        status: int,
        usage_flags: str,
    ) -> None: ...
    def health(self) -> dict[str, Any]: ...
    async def usage(self, key: Any, since: datetime | None) -> list[dict[str, Any]]: ...


def create_app(gw: Gateway, cfg: GatewayConfig, *, accounts: Accounts | None = None) -> OperatorRoutes:
    """The ASGI app for ``gw`` with the limits, CORS origins and timeouts of ``cfg``."""
    gw.dispatcher.configure(cfg.admission, idle_timeout=cfg.timeouts.idle_sec)
    limits = Limits(
        max_body_bytes=cfg.gateway.max_body_bytes,
        max_response_bytes=cfg.gateway.max_response_bytes,
        total_timeout=cfg.timeouts.total_sec,
    )
    edge = EdgeApp(gw, accounts=accounts, limits=limits, cors_origins=cfg.gateway.cors_origins)
    return OperatorRoutes(edge, gw, accounts, AdminAccess.from_config(cfg))  # /metrics, /ui


__all__ = ["Accounts", "create_app", "error_body"]
