"""Strict loading and checking of node and gateway YAML config files.

Two kinds of file exist: a *node* config (has a top-level ``node:`` section)
and a *gateway* config (``gateway:`` section, which may be omitted since every
gateway setting has a default).  Loading is strict: unknown keys, wrong types,
duplicate keys, out-of-range numbers, malformed multiaddrs and URLs, and
unusable key files are all reported, each with file, line and dotted key path,
and *all* problems in a file are reported at once.

Secrets (``node.namespace_secret``, ``backend.api_key``, ``database.url``) may
reference environment variables as ``${NAME}``, as the whole value or inside
it.  Expanded secret values never appear in any message or ``repr``.

Public entry points: :func:`load_node_config`, :func:`load_gateway_config`,
:func:`check_file` and :func:`run_check` (the ``config-check`` command).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import multiaddr
import yaml
from libp2p.identity_utils import load_identity
from libp2p.peer.id import ID

from tooti import _yaml_positions as _yp
from tooti._yaml_positions import Problem

__all__ = [
    "ConfigKind",
    "Problem",
    "ConfigError",
    "NodeConfig",
    "NodeSection",
    "NodeNetwork",
    "BackendSection",
    "ModelsSection",
    "HeartbeatSection",
    "TimeoutsSection",
    "GatewayConfig",
    "GatewaySection",
    "GatewayNetwork",
    "DatabaseSection",
    "RegistrySection",
    "RoutingSection",
    "GatewayTimeouts",
    "DATABASE_URL_ENV",
    "load_node_config",
    "load_gateway_config",
    "check_file",
    "run_check",
]

ConfigKind = Literal["node", "gateway"]

#: Environment variable that, when set and non-empty, replaces ``database.url``.
DATABASE_URL_ENV = "TOOTI_DATABASE_URL"

_DB_URL_PREFIXES = ("sqlite:///", "postgres://", "postgresql://")

_Entries = dict[str, _yp.Entry]


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
    namespace_secret: str | None = field(default=None, repr=False)
    max_concurrency: int = 4


@dataclass(frozen=True)
class NodeNetwork:
    """The node's ``network:`` section; multiaddrs are kept as strings."""

    bootstrap: tuple[str, ...] = ()
    listen: tuple[str, ...] = ()  # empty: the node only dials out


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
class NodeConfig:
    """A loaded node config; ``path`` is the absolute file path, or None."""

    path: Path | None = None
    node: NodeSection = field(default_factory=NodeSection)
    network: NodeNetwork = field(default_factory=NodeNetwork)
    backend: BackendSection = field(default_factory=BackendSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    heartbeat: HeartbeatSection = field(default_factory=HeartbeatSection)
    timeouts: TimeoutsSection = field(default_factory=TimeoutsSection)


@dataclass(frozen=True)
class GatewaySection:
    """The ``gateway:`` section."""

    identity_key_file: Path = Path("gateway.key")  # relative: to cwd when no file
    http_listen: str = "127.0.0.1:8080"
    max_body_bytes: int = 4 * 1024 * 1024
    auth: Literal["keys", "open"] = "keys"
    id: str | None = None  # None: derived from the peer id at startup

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
class GatewayTimeouts:
    """The gateway's ``timeouts:`` section, in seconds."""

    first_token_sec: float = 60.0
    total_sec: float = 600.0


@dataclass(frozen=True)
class GatewayConfig:
    """A loaded gateway config; ``GatewayConfig()`` is a valid all-default config."""

    path: Path | None = None
    gateway: GatewaySection = field(default_factory=GatewaySection)
    network: GatewayNetwork = field(default_factory=GatewayNetwork)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    timeouts: GatewayTimeouts = field(default_factory=GatewayTimeouts)


# --------------------------------------------------------------------------
# Value checkers specific to tooti (generic ones live in _yaml_positions).
# Each returns the checked value, or records a problem and returns INVALID.


_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _namespace(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    value = _yp.string(ctx, node, path)
    if value is _yp.INVALID or value == "" or _NAMESPACE_RE.fullmatch(value):
        return value
    return ctx.report(
        node,
        path,
        f"must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit, got {value!r}",
    )


_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(ctx: _yp.Ctx, node: yaml.Node, path: str, raw: str) -> Any:
    """Replace ``${NAME}`` references in ``raw`` with environment values.

    Messages name the variable, never a value, because the result is a secret.
    """
    before = len(ctx.problems)
    for name in dict.fromkeys(_ENV_REF_RE.findall(raw)):
        if name not in os.environ:
            ctx.report(node, path, f"environment variable {name} is not set")
    if "${" in _ENV_REF_RE.sub("", raw):
        ctx.report(node, path, "malformed ${...} reference; write ${NAME} using letters, digits and '_'")
    if len(ctx.problems) > before:
        return _yp.INVALID
    return _ENV_REF_RE.sub(lambda m: os.environ[m.group(1)], raw)


def _secret(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    raw = _yp.string(ctx, node, path)
    return raw if raw is _yp.INVALID else _expand_env(ctx, node, path, raw)


def _http_url(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    value = _yp.string(ctx, node, path)
    if value is _yp.INVALID:
        return value
    # The URL is not echoed: it may carry credentials (http://user:pass@host).
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        return ctx.report(node, path, "not a valid URL (check the host and port)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ctx.report(node, path, "must be an http:// or https:// URL with a host")
    return value


def _shorten(text: str, limit: int = 160) -> str:
    # The multiaddr parser repeats the input and nests its causes with raw
    # bytes; the first part is what a person needs.
    text = re.sub(r" \(string: .*\)$", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _multiaddr(*, peer_id: bool) -> _yp.Checker:
    """Checker for a multiaddr string; with ``peer_id`` it must end in /p2p/<id>."""

    def check(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
        text = _yp.string(ctx, node, path)
        if text is _yp.INVALID:
            return text
        if not text.strip():
            return ctx.report(node, path, "not a valid multiaddr: it is empty")
        try:
            addr = multiaddr.Multiaddr(text)
        except Exception as exc:  # the parser raises several unrelated types for bad input
            return ctx.report(node, path, f"not a valid multiaddr: {_shorten(str(exc))}")
        if not peer_id:
            return text
        protocols = [p.name for p in addr.protocols()]
        if protocols[-1] != "p2p":
            return ctx.report(
                node, path, "must end with /p2p/<peer id> so the dialer can verify whom it reached"
            )
        if len(protocols) < 2:
            return ctx.report(node, path, "needs a transport address before /p2p/<peer id>")
        peer = addr.value_for_protocol("p2p")
        try:
            ID.from_base58(peer)
        except Exception as exc:  # base58 decoding raises ValueError, KeyError, ...
            return ctx.report(node, path, f"invalid peer id {peer!r}: {exc}")
        return text

    return check


def _key_file(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    text = _yp.nonempty_string(ctx, node, path)
    if text is _yp.INVALID:
        return text
    resolved = Path(text).expanduser()
    if not resolved.is_absolute():
        resolved = ctx.base_dir / resolved
    why = _key_file_problem(resolved)
    return resolved if why is None else ctx.report(node, path, why)


def _key_file_problem(path: Path) -> str | None:
    """Say why ``path`` cannot serve as an identity key file, or ``None`` if it can.

    An existing file must hold a libp2p private key.  A missing file is fine
    as long as it can be created on first start.
    """
    try:
        exists = path.exists()
    except OSError as exc:
        return f"cannot access {path}: {exc.strerror or exc}"
    if exists:
        if path.is_dir():
            return f"{path} is a directory, not a key file"
        if not os.access(path, os.R_OK):
            return f"{path} is not readable"
        try:
            load_identity(path)
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"
        except Exception:  # key deserialisation raises assorted types for garbage
            return f"{path} is not a libp2p private key file"
        return None
    parent = path.parent
    if not parent.is_dir():
        return f"{path} does not exist and neither does its directory {parent}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} does not exist and cannot be created: {parent} is not writable"
    return None


def _split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6addr]:port``; raise ValueError with a reason."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ValueError("expected [address]:port for IPv6, e.g. [::1]:8080")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError("expected host:port, e.g. 127.0.0.1:8080")
        if ":" in host:
            raise ValueError("put IPv6 addresses in brackets, e.g. [::1]:8080")
    if not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1..65535")
    return host, port


def _host_port(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    text = _yp.string(ctx, node, path)
    if text is _yp.INVALID:
        return text
    try:
        _split_host_port(text)
    except ValueError as exc:
        return ctx.report(node, path, f"{exc}, got {text!r}")
    return text


def _is_db_url(url: str) -> bool:
    return url.startswith(_DB_URL_PREFIXES)


_DB_URL_RULE = "must start with " + ", ".join(_DB_URL_PREFIXES[:-1]) + " or " + _DB_URL_PREFIXES[-1]


def _database_url(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    raw = _yp.string(ctx, node, path)
    if raw is _yp.INVALID or os.environ.get(DATABASE_URL_ENV):
        # Overridden: the file's value is never used, so unset ${VARS} in it
        # must not fail the load.  The override is checked in _gateway_post.
        return raw
    url = _expand_env(ctx, node, path, raw)
    if url is _yp.INVALID or _is_db_url(url):
        return url
    return ctx.report(node, path, _DB_URL_RULE)  # the URL itself may hold a password


# --------------------------------------------------------------------------
# Cross-field checks


def _backend_post(
    ctx: _yp.Ctx, entries: _Entries, values: dict[str, Any], path: str, line: int | None
) -> None:
    kind = values.get("type")
    if kind is not None and kind != "loopback" and "base_url" not in entries:
        ctx.report(line, _yp.join(path, "base_url"), f"missing required key (needed for type {kind!r})")


def _models_post(
    ctx: _yp.Ctx, entries: _Entries, values: dict[str, Any], path: str, line: int | None
) -> None:
    if values.get("allow") == ():
        ctx.report(entries["allow"].value_node, _yp.join(path, "allow"),
                   "empty list would serve no models; remove the key to serve every model")


def _timeouts_post(
    ctx: _yp.Ctx, entries: _Entries, values: dict[str, Any], path: str, line: int | None
) -> None:
    first, total = values.get("first_token_sec"), values.get("total_sec")
    if first is not None and total is not None and first > total:
        ctx.report(entries["first_token_sec"].value_node, _yp.join(path, "first_token_sec"),
                   f"must not exceed total_sec ({total:g})")


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

_NODE_SCHEMA = _yp.Section(NodeConfig, {
    "node": _yp.Field(required=True, section=_yp.Section(NodeSection, {
        "name": _yp.Field(_yp.nonempty_string),
        "identity_key_file": _yp.Field(_key_file, required=True),
        "namespace": _yp.Field(_namespace),
        "namespace_secret": _yp.Field(_secret),
        "max_concurrency": _yp.Field(_yp.integer(1)),
    })),
    "network": _yp.Field(required=True, section=_yp.Section(NodeNetwork, {
        "bootstrap": _yp.Field(_yp.list_of(_multiaddr(peer_id=True), min_items=1), required=True),
        "listen": _yp.Field(_yp.list_of(_multiaddr(peer_id=False))),
    })),
    "backend": _yp.Field(required=True, section=_yp.Section(BackendSection, {
        "type": _yp.Field(_yp.one_of("openai", "ollama", "loopback"), required=True),
        "base_url": _yp.Field(_http_url),
        "api_key": _yp.Field(_secret),
    }, post=_backend_post)),
    "models": _yp.Field(section=_yp.Section(ModelsSection, {
        "allow": _yp.Field(_yp.list_of(_yp.nonempty_string), null_is_default=True),
        "refresh_sec": _SECONDS,
    }, post=_models_post)),
    "heartbeat": _yp.Field(section=_yp.Section(HeartbeatSection, {"interval_sec": _SECONDS})),
    "timeouts": _yp.Field(section=_yp.Section(TimeoutsSection, {
        "connect_sec": _SECONDS,
        "first_token_sec": _SECONDS,
        "total_sec": _SECONDS,
    }, post=_timeouts_post)),
})

_GATEWAY_SCHEMA = _yp.Section(GatewayConfig, {
    "gateway": _yp.Field(section=_yp.Section(GatewaySection, {
        "identity_key_file": _yp.Field(_key_file),
        "http_listen": _yp.Field(_host_port),
        "max_body_bytes": _yp.Field(_yp.integer(1024)),
        "auth": _yp.Field(_yp.one_of("keys", "open")),
        "id": _yp.Field(_yp.nonempty_string),
    }, post=_gateway_section_post)),
    "network": _yp.Field(section=_yp.Section(GatewayNetwork, {
        "listen": _yp.Field(_yp.list_of(_multiaddr(peer_id=False))),
        "bootstrap": _yp.Field(_yp.list_of(_multiaddr(peer_id=True))),
        "announce": _yp.Field(_yp.list_of(_multiaddr(peer_id=False))),
    })),
    "database": _yp.Field(section=_yp.Section(DatabaseSection, {"url": _yp.Field(_database_url)})),
    "registry": _yp.Field(section=_yp.Section(RegistrySection, {"heartbeat_ttl_sec": _SECONDS})),
    "routing": _yp.Field(section=_yp.Section(RoutingSection, {
        "max_attempts": _yp.Field(_yp.integer(1, 10)),
    })),
    "timeouts": _yp.Field(section=_yp.Section(GatewayTimeouts, {
        "first_token_sec": _SECONDS,
        "total_sec": _SECONDS,
    }, post=_timeouts_post)),
}, post=_gateway_post)

_SCHEMAS: dict[str, _yp.Section] = {"node": _NODE_SCHEMA, "gateway": _GATEWAY_SCHEMA}

# Sections only one kind of file has; used to guess the kind when neither a
# `node:` nor a `gateway:` section is present.
_NODE_ONLY = {"node", "backend", "models", "heartbeat"}
_GATEWAY_ONLY = {"gateway", "database", "registry", "routing"}


# --------------------------------------------------------------------------
# Whole-file checking


def _detect_kind(keys: set[str]) -> ConfigKind | None:
    if "node" in keys and "gateway" not in keys:
        return "node"
    if "gateway" in keys and "node" not in keys:
        return "gateway"
    if "node" in keys:  # both: ambiguous
        return None
    node_hint, gateway_hint = bool(keys & _NODE_ONLY), bool(keys & _GATEWAY_ONLY)
    if node_hint != gateway_hint:
        return "node" if node_hint else "gateway"
    return None


def _check(
    path: str | os.PathLike[str], kind: ConfigKind | None
) -> tuple[ConfigKind | None, list[Problem], Any]:
    """Check a file; return ``(kind, problems, config or None)``.  OSError propagates."""
    if kind not in (None, "node", "gateway"):
        raise ValueError(f"kind must be 'node', 'gateway' or None, not {kind!r}")
    file = os.fspath(path)
    data = Path(file).read_bytes()
    ctx = _yp.Ctx(file, Path(os.path.abspath(file)).parent)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        ctx.report(data[: exc.start].count(b"\n") + 1, "", "file is not valid UTF-8 text")
        return kind, ctx.problems, None
    try:
        root = _yp.compose(text)
    except _yp.YamlSyntaxError as exc:
        ctx.report(exc.line, "", f"invalid YAML: {exc.message}")
        return kind, ctx.problems, None
    if root is None:
        ctx.report(None, "", "file is empty")
        return kind, ctx.problems, None
    if not isinstance(root, yaml.MappingNode):
        ctx.report(root, "", f"top level must be a mapping of sections, got {_yp.describe(root)}")
        return kind, ctx.problems, None

    if kind is None:
        keys = {k.value for k, _ in root.value if isinstance(k, yaml.ScalarNode)}
        kind = _detect_kind(keys)
        if kind is None:
            why = ("has both node: and gateway: sections; a file configures one or the other"
                   if {"node", "gateway"} <= keys else
                   "cannot tell whether this is a node or a gateway config; add a node: or gateway: section")
            ctx.report(_yp.line_of(root), "", why)
            return None, ctx.problems, None

    schema = _SCHEMAS[kind]
    values = _yp.check_section(ctx, root, "", None, schema)
    problems = sorted(ctx.problems, key=lambda p: (p.line is not None, p.line or 0))
    if problems:
        return kind, problems, None
    return kind, [], schema.cls(path=Path(os.path.abspath(file)), **values)


def check_file(
    path: str | os.PathLike[str], kind: ConfigKind | None = None
) -> tuple[ConfigKind | None, list[Problem]]:
    """Check a config file and return ``(kind, problems)``; no problems means valid.

    ``kind`` is detected from the top-level section (``node:`` or ``gateway:``,
    falling back to kind-specific sections such as ``backend:`` or
    ``database:``) unless given; the returned kind is ``None`` when it could
    not be told.  Raises OSError if the file cannot be read.
    """
    detected, problems, _ = _check(path, kind)
    return detected, problems


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Load a node config file.

    Relative paths in the file resolve against the file's directory.  Raises
    :class:`ConfigError` listing every problem, or OSError if unreadable.
    """
    _, problems, config = _check(path, "node")
    if problems:
        raise ConfigError(problems)
    assert isinstance(config, NodeConfig)
    return config


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load a gateway config file.

    Relative paths in the file resolve against the file's directory.  If the
    environment variable ``TOOTI_DATABASE_URL`` is set and non-empty it
    replaces ``database.url`` (the file's value, and any ``${VAR}`` in it, is
    then ignored); it must start with ``sqlite:///``, ``postgres://`` or
    ``postgresql://``.  Raises :class:`ConfigError` listing every problem, or
    OSError if unreadable.
    """
    _, problems, config = _check(path, "gateway")
    if problems:
        raise ConfigError(problems)
    assert isinstance(config, GatewayConfig)
    return config


def run_check(
    path: str,
    *,
    as_json: bool,
    kind: ConfigKind | None = None,
    out: TextIO | None = None,
) -> int:
    """Check ``path`` and print a report to ``out`` (default: ``sys.stdout``).

    Returns 0 if valid, 1 if invalid, 2 if the file cannot be read.  With
    ``as_json`` prints ``{"file", "kind", "valid", "problems": [...]}``; for
    an unreadable file an ``"error"`` string is added.
    """
    out = sys.stdout if out is None else out  # looked up late so capture works
    try:
        detected, problems = check_file(path, kind)
    except OSError as exc:
        error = f"cannot read config file: {exc.strerror or exc}"
        if as_json:
            report = {"file": path, "kind": kind, "valid": False, "problems": [], "error": error}
            print(json.dumps(report, indent=2), file=out)
        else:
            print(f"{path}: {error}", file=out)
        return 2
    if as_json:
        report = {
            "file": path,
            "kind": detected,
            "valid": not problems,
            "problems": [p.to_dict() for p in problems],
        }
        print(json.dumps(report, indent=2), file=out)
    elif problems:
        for problem in problems:
            print(problem, file=out)
        noun = "problem" if len(problems) == 1 else "problems"
        print(f"{path}: {len(problems)} {noun}", file=out)
    else:
        print(f"{path}: OK ({detected} config)", file=out)
    return 1 if problems else 0
