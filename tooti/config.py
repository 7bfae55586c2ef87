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

import json
import os
import sys
from typing import TextIO

from tooti._config_checks import DATABASE_URL_ENV
from tooti._config_file import CheckResult, ConfigKind, _check_document
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
from tooti._config_schema import _SCHEMAS
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
