"""Strict loading and checking of node and gateway YAML config files.

Two kinds of file exist: a *node* config (has a top-level ``node:`` section)
and a *gateway* config (``gateway:`` section, which may be omitted since every
gateway setting has a default).  Loading is strict: unknown keys, wrong types,
duplicate keys, out-of-range numbers, malformed multiaddrs and URLs, and
unusable key files are all reported, each with file, line and dotted key path,
and *all* problems in a file are reported at once.

Secrets (``node.namespace_key``, ``backend.api_key``, ``database.url``) may
reference environment variables as ``${NAME}``, as the whole value or inside
it.  Expanded secret values never appear in any message or ``repr``.

Public entry points: :func:`load_node_config`, :func:`load_gateway_config`,
:func:`check_file`, :func:`check_file_offline` and :func:`run_check` (the
``config-check`` command).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

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
    _split_host_port,
    _timeouts_post,
)
from tooti._config_file import CheckResult, ConfigKind, _check_document
from tooti._yaml_positions import Problem

__all__ = [
    "DATABASE_URL_ENV",
    "AdminSection",
    "AdmissionSection",
    "BackendSection",
    "CheckResult",
    "ConfigError",
    "ConfigKind",
    "DatabaseSection",
    "GatewayConfig",
    "GatewayMetricsSection",
    "GatewayNetwork",
    "GatewaySection",
    "GatewayTimeouts",
    "HeartbeatSection",
    "ModelsSection",
    "NodeConfig",
    "NodeMetricsSection",
    "NodeNetwork",
    "NodeSection",
    "Problem",
    "RegistrySection",
    "RoutingSection",
    "TimeoutsSection",
    "check_file",
    "check_file_offline",
    "load_gateway_config",
    "load_node_config",
    "run_check",
]


class ConfigError(Exception):
    """A config file is invalid; ``problems`` lists every problem found.

    ``str(error)`` is the problems, one per line.
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------
# Config objects.  Attribute names equal the YAML keys; every field has a
# default so code and tests can build configs without a file.  Secrets are
# kept out of repr() so that logging a config cannot leak them.


@dataclass(frozen=True)
class NodeSection:
    """The ``node:`` section: who this node is and how much work it takes."""

    name: str = field(default_factory=socket.gethostname)
    identity_key_file: Path = Path("node.key")
    namespace: str = ""  # "" is the public pool
    # The namespace's private key (``tooti-ns-key-v1:...``); only its public half is stored.
    namespace_key: str | None = field(default=None, repr=False)
    max_concurrency: int = 4


@dataclass(frozen=True)
class NodeNetwork:
    """The node's ``network:`` section; multiaddrs are kept as strings."""

    bootstrap: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()  # empty: the node only dials out
    id: str = ""  # the network id (tooti-net-pub-v1:...): only its certified gateways are joined


@dataclass(frozen=True)
class BackendSection:
    """The ``backend:`` section: the local inference server the node fronts."""

    type: Literal["openai", "ollama", "loopback"] = "loopback"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ModelsSection:
    """The ``models:`` section: which backend models to offer."""

    allow: tuple[str, ...] | None = None  # None: every model the backend lists
    refresh_sec: float = 30.0


@dataclass(frozen=True)
class HeartbeatSection:
    """The ``heartbeat:`` section."""

    interval_sec: float = 5.0


@dataclass(frozen=True)
class TimeoutsSection:
    """The node's ``timeouts:`` section, in seconds."""

    connect_sec: float = 5.0
    first_token_sec: float = 60.0
    total_sec: float = 600.0


@dataclass(frozen=True)
class NodeMetricsSection:
    """The node's ``metrics:`` section: where to serve Prometheus ``/metrics`` (None: nowhere)."""

    listen: str | None = None


@dataclass(frozen=True)
class NodeConfig:
    """A loaded node config; ``path`` is the absolute file path, or None."""

    path: Path | None = None
    node: NodeSection = field(default_factory=NodeSection)
    network: NodeNetwork = field(default_factory=NodeNetwork)
    backend: BackendSection = field(default_factory=BackendSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    heartbeat: HeartbeatSection = field(default_factory=HeartbeatSection)
    timeouts: TimeoutsSection = field(default_factory=TimeoutsSection)
    metrics: NodeMetricsSection = field(default_factory=NodeMetricsSection)


@dataclass(frozen=True)
class GatewaySection:
    """The ``gateway:`` section."""

    identity_key_file: Path = Path("gateway.key")  # relative: to cwd when no file
    http_listen: str = "127.0.0.1:8080"
    max_body_bytes: int = 4 * 1024 * 1024
    # A non-streamed answer larger than this is refused with 502 and its backend request
    # cancelled, so a node that never ends an answer cannot grow the gateway without bound.
    max_response_bytes: int = 32 * 1024 * 1024
    auth: Literal["keys", "open"] = "keys"
    id: str | None = None  # None: derived from the peer id at startup
    # Browser origins allowed to call the API (CORS), e.g. "http://localhost:3000"; "*" for
    # any. Empty: no CORS headers at all, so browsers on other origins are refused.
    cors_origins: tuple[str, ...] = ()

    @property
    def http_host(self) -> str:
        """Host part of ``http_listen``, without IPv6 brackets."""
        return _split_host_port(self.http_listen)[0]

    @property
    def http_port(self) -> int:
        """Port part of ``http_listen``."""
        return _split_host_port(self.http_listen)[1]


@dataclass(frozen=True)
class GatewayNetwork:
    """The gateway's ``network:`` section; multiaddrs are kept as strings."""

    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()
    id: str = ""  # the network id (tooti-net-pub-v1:...)
    # This gateway's certificate (``tooti network admit-gateway``), or the network's private
    # key itself, with which a gateway admits itself (one-operator networks, ``tooti up``).
    certificate_file: Path | None = None
    key_file: Path | None = None
    revocations_file: Path | None = None
    max_connections: int = 10_000  # live libp2p connections (nodes + peer gateways)


@dataclass(frozen=True)
class DatabaseSection:
    """The ``database:`` section; ``url`` may hold a password."""

    url: str = field(default="sqlite:///tooti.db", repr=False)


@dataclass(frozen=True)
class RegistrySection:
    """The ``registry:`` section."""

    heartbeat_ttl_sec: float = 15.0


@dataclass(frozen=True)
class RoutingSection:
    """The ``routing:`` section."""

    max_attempts: int = 3


@dataclass(frozen=True)
class AdmissionSection:
    """The ``admission:`` section: the gateway's queue for requests every node is too busy for."""

    queue_timeout_sec: float = 30.0  # then 503 + Retry-After
    max_queued: int = 4096  # across all callers; beyond it 503 at once
    max_queued_per_key: int = 1024  # one caller's share; beyond it 429 at once


@dataclass(frozen=True)
class GatewayTimeouts:
    """The gateway's ``timeouts:`` section, in seconds."""

    first_token_sec: float = 60.0
    total_sec: float = 600.0
    idle_sec: float = 60.0  # longest silence between two pieces of an answer


@dataclass(frozen=True)
class GatewayMetricsSection:
    """The gateway's ``metrics:`` section.

    ``auth`` decides who may read ``/metrics`` and the dashboard's data in keys mode:
    ``admin`` (an API key listed in ``admin.key_prefixes``) or ``open`` (anyone who can
    reach the HTTP port, as Prometheus scrapers usually expect on a private network).
    """

    auth: Literal["admin", "open"] = "admin"


@dataclass(frozen=True)
class AdminSection:
    """The ``admin:`` section: which API keys (by prefix) are operators' keys."""

    key_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    """A loaded gateway config; ``GatewayConfig()`` is a valid all-default config."""

    path: Path | None = None
    gateway: GatewaySection = field(default_factory=GatewaySection)
    network: GatewayNetwork = field(default_factory=GatewayNetwork)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    admission: AdmissionSection = field(default_factory=AdmissionSection)
    timeouts: GatewayTimeouts = field(default_factory=GatewayTimeouts)
    metrics: GatewayMetricsSection = field(default_factory=GatewayMetricsSection)
    admin: AdminSection = field(default_factory=AdminSection)


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
                    "max_concurrency": _yp.Field(_yp.integer(1)),
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


# --------------------------------------------------------------------------
# Whole-file checking


def _check(path: str | os.PathLike[str], kind: ConfigKind | None, *, require_env: bool = True) -> CheckResult:
    """Check a file against its schema.  OSError propagates."""
    return _check_document(path, kind, _SCHEMAS, require_env=require_env)


def check_file(
    path: str | os.PathLike[str], kind: ConfigKind | None = None
) -> tuple[ConfigKind | None, list[Problem]]:
    """Check a config file and return ``(kind, problems)``; no problems means valid.

    The check is the one start-up makes: an unset ``${NAME}`` variable is a
    problem.  ``kind`` is detected from the top-level section (``node:`` or
    ``gateway:``, falling back to kind-specific sections such as ``backend:``
    or ``database:``) unless given; the returned kind is ``None`` when it could
    not be told.  Raises OSError if the file cannot be read.
    """
    result = _check(path, kind)
    return result.kind, result.problems


def check_file_offline(path: str | os.PathLike[str], kind: ConfigKind | None = None) -> CheckResult:
    """Check a config file without the deployment's environment (what CI does).

    Like :func:`check_file`, except that unset ``${NAME}`` variables land in
    ``result.warnings`` instead of ``result.problems``.
    """
    return _check(path, kind, require_env=False)


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Load a node config file.

    Relative paths in the file resolve against the file's directory.  Raises
    :class:`ConfigError` listing every problem, or OSError if unreadable.
    """
    result = _check(path, "node")
    if result.problems:
        raise ConfigError(result.problems)
    assert isinstance(result.config, NodeConfig)
    return result.config


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load a gateway config file.

    Relative paths in the file resolve against the file's directory.  If the
    environment variable ``TOOTI_DATABASE_URL`` is set and non-empty it
    replaces ``database.url`` (the file's value, and any ``${VAR}`` in it, is
    then ignored); it must start with ``sqlite:///``, ``postgres://`` or
    ``postgresql://``.  Raises :class:`ConfigError` listing every problem, or
    OSError if unreadable.
    """
    result = _check(path, "gateway")
    if result.problems:
        raise ConfigError(result.problems)
    assert isinstance(result.config, GatewayConfig)
    return result.config


def run_check(
    path: str,
    *,
    as_json: bool,
    kind: ConfigKind | None = None,
    out: TextIO | None = None,
    require_env: bool = False,
) -> int:
    """Check ``path`` and print a report to ``out`` (default: ``sys.stdout``).

    Returns 0 if valid, 1 if invalid, 2 if the file cannot be read.  Unset
    ``${NAME}`` variables are warnings (printed, exit 0) unless
    ``require_env``, which makes them problems as at start-up.  With
    ``as_json`` prints ``{"file", "kind", "valid", "problems": [...],
    "warnings": [...]}``; for an unreadable file an ``"error"`` string is added.
    """
    out = sys.stdout if out is None else out  # looked up late so capture works
    try:
        result = _check(path, kind, require_env=require_env)
    except OSError as exc:
        error = f"cannot read config file: {exc.strerror or exc}"
        if as_json:
            report: dict[str, object] = {
                "file": path,
                "kind": kind,
                "valid": False,
                "problems": [],
                "warnings": [],
                "error": error,
            }
            print(json.dumps(report, indent=2), file=out)
        else:
            print(f"{path}: {error}", file=out)
        return 2
    problems, warnings = result.problems, result.warnings
    if as_json:
        report = {
            "file": path,
            "kind": result.kind,
            "valid": not problems,
            "problems": [p.to_dict() for p in problems],
            "warnings": [w.to_dict() for w in warnings],
        }
        print(json.dumps(report, indent=2), file=out)
        return 1 if problems else 0
    for problem in problems:
        print(problem, file=out)
    for warning in warnings:
        print(f"warning: {warning}", file=out)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        print(f"{path}: {len(problems)} {noun}", file=out)
        return 1
    suffix = ""
    if warnings:
        noun = "warning" if len(warnings) == 1 else "warnings"
        suffix = f", {len(warnings)} {noun} (use --require-env to make them errors)"
    print(f"{path}: OK ({result.kind} config){suffix}", file=out)
    return 0
