"""The config objects: one frozen dataclass per section, attribute names equal to YAML keys.

Internal to :mod:`tooti.config`, which re-exports every class here; import them from there.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tooti._config_checks import _split_host_port

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
    # "tooti": the gateway's own HTTP/1.1 server (tooti.gateway.http.server), built for the
    # per-token hot path; "hypercorn": Hypercorn, kept as a fallback.
    http_server: Literal["tooti", "hypercorn"] = "tooti"

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
