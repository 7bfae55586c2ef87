"""The schemas of node and gateway config files, and the checks that build config objects.

Internal to :mod:`tooti.config`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from tooti import _yaml_positions as _yp
from tooti._config_checks import (
    _DB_URL_RULE,
    DATABASE_URL_ENV,
    _backend_post,
    _database_url,
    _Entries,
    _file_path,
    _host_port,
    _http_url,
    _is_db_url,
    _key_file,
    _key_file_problem,
    _models_post,
    _multiaddr,
    _namespace,
    _namespace_key,
    _network_id,
    _secret,
    _timeouts_post,
)
from tooti._config_model import (
    AdminSection,
    AdmissionSection,
    BackendSection,
    DatabaseSection,
    GatewayConfig,
    GatewayMetricsSection,
    GatewayNetwork,
    GatewaySection,
    GatewayTimeouts,
    HeartbeatSection,
    ModelsSection,
    NodeConfig,
    NodeMetricsSection,
    NodeNetwork,
    NodeSection,
    RegistrySection,
    RoutingSection,
    TimeoutsSection,
)
from tooti.wire import MAX_CONCURRENCY

# --------------------------------------------------------------------------
# Cross-field checks that build config objects (the others live in
# _config_checks).


def _default_gateway_key_file(ctx: _yp.Ctx, line: int | None) -> Path:
    # The default key file lives beside the config file, like explicit
    # relative paths, and must be just as usable.
    key_file = ctx.base_dir / GatewaySection.identity_key_file
    why = _key_file_problem(key_file)
    if why is not None:
        ctx.report(line, "gateway.identity_key_file", why)
    return key_file


def _gateway_section_post(
    ctx: _yp.Ctx, entries: _Entries, values: dict[str, Any], path: str, line: int | None
) -> None:
    if "identity_key_file" not in entries:
        values["identity_key_file"] = _default_gateway_key_file(ctx, line)


def _gateway_post(
    ctx: _yp.Ctx, entries: _Entries, values: dict[str, Any], path: str, line: int | None
) -> None:
    if "gateway" not in entries:
        values["gateway"] = GatewaySection(identity_key_file=_default_gateway_key_file(ctx, None))
    override = os.environ.get(DATABASE_URL_ENV)
    if not override:
        return
    if not _is_db_url(override):
        ctx.report(None, "database.url", f"{DATABASE_URL_ENV} (which overrides the file) {_DB_URL_RULE}")
        return
    values["database"] = dataclasses.replace(values.get("database", DatabaseSection()), url=override)


# --------------------------------------------------------------------------
# Schemas

_SECONDS = _yp.Field(_yp.positive_number)

_NODE_SCHEMA = _yp.Section(
    NodeConfig,
    {
        "node": _yp.Field(
            required=True,
            section=_yp.Section(
                NodeSection,
                {
                    "name": _yp.Field(_yp.nonempty_string),
                    "identity_key_file": _yp.Field(_key_file, required=True),
                    "namespace": _yp.Field(_namespace),
                    "namespace_key": _yp.Field(_namespace_key),
                    "max_concurrency": _yp.Field(_yp.integer(1, MAX_CONCURRENCY)),
                },
            ),
        ),
        "network": _yp.Field(
            required=True,
            section=_yp.Section(
                NodeNetwork,
                {
                    "bootstrap": _yp.Field(_yp.list_of(_multiaddr(peer_id=True), min_items=1), required=True),
                    "listen": _yp.Field(_yp.list_of(_multiaddr(peer_id=False))),
                    "id": _yp.Field(_network_id, required=True),
                },
            ),
        ),
        "backend": _yp.Field(
            required=True,
            section=_yp.Section(
                BackendSection,
                {
                    "type": _yp.Field(_yp.one_of("openai", "ollama", "loopback"), required=True),
                    "base_url": _yp.Field(_http_url),
                    "api_key": _yp.Field(_secret),
                },
                post=_backend_post,
            ),
        ),
        "models": _yp.Field(
            section=_yp.Section(
                ModelsSection,
                {
                    "allow": _yp.Field(_yp.list_of(_yp.nonempty_string), null_is_default=True),
                    "refresh_sec": _SECONDS,
                },
                post=_models_post,
            )
        ),
        "heartbeat": _yp.Field(section=_yp.Section(HeartbeatSection, {"interval_sec": _SECONDS})),
        "timeouts": _yp.Field(
            section=_yp.Section(
                TimeoutsSection,
                {
                    "connect_sec": _SECONDS,
                    "first_token_sec": _SECONDS,
                    "total_sec": _SECONDS,
                },
                post=_timeouts_post,
            )
        ),
        "metrics": _yp.Field(section=_yp.Section(NodeMetricsSection, {"listen": _yp.Field(_host_port)})),
    },
)

_GATEWAY_SCHEMA = _yp.Section(
    GatewayConfig,
    {
        "gateway": _yp.Field(
            section=_yp.Section(
                GatewaySection,
                {
                    "identity_key_file": _yp.Field(_key_file),
                    "http_listen": _yp.Field(_host_port),
                    "max_body_bytes": _yp.Field(_yp.integer(1024)),
                    "max_response_bytes": _yp.Field(_yp.integer(1024)),
                    "auth": _yp.Field(_yp.one_of("keys", "open")),
                    "id": _yp.Field(_yp.nonempty_string),
                    "cors_origins": _yp.Field(_yp.list_of(_yp.nonempty_string)),
                    "http_server": _yp.Field(_yp.one_of("tooti", "hypercorn")),
                },
                post=_gateway_section_post,
            )
        ),
        "network": _yp.Field(
            section=_yp.Section(
                GatewayNetwork,
                {
                    "listen": _yp.Field(_yp.list_of(_multiaddr(peer_id=False))),
                    "bootstrap": _yp.Field(_yp.list_of(_multiaddr(peer_id=True))),
                    "announce": _yp.Field(_yp.list_of(_multiaddr(peer_id=False))),
                    "id": _yp.Field(_network_id),
                    "certificate_file": _yp.Field(_file_path),
                    "key_file": _yp.Field(_file_path),
                    "revocations_file": _yp.Field(_file_path),
                    "max_connections": _yp.Field(_yp.integer(16, 1_000_000)),
                },
            )
        ),
        "database": _yp.Field(section=_yp.Section(DatabaseSection, {"url": _yp.Field(_database_url)})),
        "registry": _yp.Field(section=_yp.Section(RegistrySection, {"heartbeat_ttl_sec": _SECONDS})),
        "routing": _yp.Field(
            section=_yp.Section(
                RoutingSection,
                {
                    "max_attempts": _yp.Field(_yp.integer(1, 10)),
                },
            )
        ),
        "admission": _yp.Field(
            section=_yp.Section(
                AdmissionSection,
                {
                    "queue_timeout_sec": _SECONDS,
                    "max_queued": _yp.Field(_yp.integer(0)),
                    "max_queued_per_key": _yp.Field(_yp.integer(0)),
                },
            )
        ),
        "timeouts": _yp.Field(
            section=_yp.Section(
                GatewayTimeouts,
                {
                    "first_token_sec": _SECONDS,
                    "total_sec": _SECONDS,
                    "idle_sec": _SECONDS,
                },
                post=_timeouts_post,
            )
        ),
        "metrics": _yp.Field(
            section=_yp.Section(GatewayMetricsSection, {"auth": _yp.Field(_yp.one_of("admin", "open"))})
        ),
        "admin": _yp.Field(
            section=_yp.Section(AdminSection, {"key_prefixes": _yp.Field(_yp.list_of(_yp.nonempty_string))})
        ),
    },
    post=_gateway_post,
)

_SCHEMAS: dict[str, _yp.Section] = {"node": _NODE_SCHEMA, "gateway": _GATEWAY_SCHEMA}
