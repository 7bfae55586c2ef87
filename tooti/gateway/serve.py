"""Wiring a gateway to its accounts: the store, the key cache and the usage ledger.

``run.py`` knows only the network and HTTP; this module decides, from the config, whether
the gateway runs in ``keys`` mode (API keys, namespace proofs and the ledger, on SQLite or
PostgreSQL) or in ``open`` development mode (no keys, any namespace accepted).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from tooti.config import GatewayConfig

from .run import Started, run_gateway

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # the stubs mypy reads for trio (installed with libp2p)

log = logging.getLogger("tooti.gateway")


async def serve_gateway(
    cfg: GatewayConfig, *, task_status: TaskStatus[Started] = trio.TASK_STATUS_IGNORED
) -> None:
    if cfg.gateway.auth == "open":
        log.warning(
            "OPEN DEVELOPMENT MODE: no API keys are checked and any namespace claim is "
            "accepted. Never expose this gateway to a network you do not control."
        )
        await run_gateway(cfg, task_status=task_status)
        return
    from .accounts import serve_with_accounts

    await serve_with_accounts(cfg, task_status=task_status)
