"""Field and section checkers specific to tooti's config files.

The generic checkers (strings, numbers, lists, ...) live in
:mod:`tooti._yaml_positions`; this module adds the tooti-specific ones used by
the schemas in :mod:`tooti.config`: namespaces, ``${NAME}`` secret expansion,
URLs, multiaddrs, identity key files, ``host:port`` and database URLs, plus the
cross-field checks that need nothing but the section's own values.

Each value checker returns the checked value, or records a problem and returns
``INVALID``.  Nothing here knows about the config dataclasses.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import multiaddr
import yaml
from libp2p.identity_utils import load_identity
from libp2p.peer.id import ID

from tooti import _yaml_positions as _yp

#: Environment variable that, when set and non-empty, replaces ``database.url``.
DATABASE_URL_ENV = "TOOTI_DATABASE_URL"

_DB_URL_PREFIXES = ("sqlite:///", "postgres://", "postgresql://")

_Entries = dict[str, _yp.Entry]


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


class Deferred(str):
    """A value whose ``${NAME}`` references could not be expanded: checked offline (CI),
    without the deployment's environment. Checkers that validate a value's content pass it
    through unchecked; only start-up, which requires the environment, sees the real value."""

    __slots__ = ()


def _expand_env(ctx: _yp.Ctx, node: yaml.Node, path: str, raw: str) -> Any:
    """Replace ``${NAME}`` references in ``raw`` with environment values.

    Messages name the variable, never a value, because the result is a secret.
    An unset variable is a problem when ``ctx.require_env`` (loading for
    start-up), else a warning, and the reference is kept unexpanded.
    """
    before = len(ctx.problems)
    for name in dict.fromkeys(_ENV_REF_RE.findall(raw)):
        if name in os.environ:
            continue
        if ctx.require_env:
            ctx.report(node, path, f"environment variable {name} is not set")
        else:
            ctx.warn(node, path, f"environment variable {name} is not set (it must be set at start-up)")
    if "${" in _ENV_REF_RE.sub("", raw):
        ctx.report(node, path, "malformed ${...} reference; write ${NAME} using letters, digits and '_'")
    if len(ctx.problems) > before:
        return _yp.INVALID
    if any(name not in os.environ for name in _ENV_REF_RE.findall(raw)):
        return Deferred(raw)
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
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
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
        except Exception as exc:  # noqa: BLE001 - the parser raises several unrelated types for bad input
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
        except Exception as exc:  # noqa: BLE001 - base58 decoding raises ValueError, KeyError, ...
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
        except Exception:  # noqa: BLE001 - key deserialisation raises assorted types for garbage
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
    if url is _yp.INVALID or isinstance(url, Deferred) or _is_db_url(url):
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
        ctx.report(
            entries["allow"].value_node,
            _yp.join(path, "allow"),
            "empty list would serve no models; remove the key to serve every model",
        )


def _timeouts_post(
    ctx: _yp.Ctx, entries: _Entries, values: dict[str, Any], path: str, line: int | None
) -> None:
    first, total = values.get("first_token_sec"), values.get("total_sec")
    if first is not None and total is not None and first > total:
        ctx.report(
            entries["first_token_sec"].value_node,
            _yp.join(path, "first_token_sec"),
            f"must not exceed total_sec ({total:g})",
        )


def _file_path(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    """A file path, resolved against the config file's folder (existence checked at start)."""
    text = _yp.nonempty_string(ctx, node, path)
    if text is _yp.INVALID:
        return text
    resolved = Path(text).expanduser()
    return resolved if resolved.is_absolute() else ctx.base_dir / resolved


def _network_id(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    """A network id: the network's public key, ``tooti-net-pub-v1:...`` (may be ${ENV})."""
    from tooti.p2p import keys

    value = _secret(ctx, node, path)
    if value is _yp.INVALID or isinstance(value, Deferred):
        return value
    try:
        return keys.check_public(value, keys.NETWORK_PUBLIC)
    except keys.KeyFormatError as exc:
        return ctx.report(node, path, f"not a network id ({exc}); `tooti network init` prints one")


def _namespace_key(ctx: _yp.Ctx, node: yaml.Node, path: str) -> Any:
    """A namespace private key, ``tooti-ns-key-v1:...`` (usually ${ENV}); never echoed."""
    from tooti.p2p import keys

    value = _secret(ctx, node, path)
    if value is _yp.INVALID or isinstance(value, Deferred):
        return value
    try:
        keys.public_of(value, keys.NAMESPACE_PRIVATE, keys.NAMESPACE_PUBLIC)
    except (keys.KeyFormatError, ValueError):
        return ctx.report(
            node, path, "not a namespace private key (tooti-ns-key-v1:...; see `tooti namespace create`)"
        )
    return value.strip()
