"""Reading one config file and checking it against a schema.

Decodes the file, parses it into a position-carrying YAML node graph, tells a
node config from a gateway config when the caller did not say, and runs the
schema walker of :mod:`tooti._yaml_positions`.  The schemas themselves are
passed in by :mod:`tooti.config`, so this module knows no config classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tooti import _yaml_positions as _yp
from tooti._yaml_positions import Problem

ConfigKind = Literal["node", "gateway"]

# Sections only one kind of file has; used to guess the kind when neither a
# `node:` nor a `gateway:` section is present.
_NODE_ONLY = {"node", "backend", "models", "heartbeat"}
_GATEWAY_ONLY = {"gateway", "database", "registry", "routing", "admin"}


def _detect_kind(keys: set[str]) -> ConfigKind | None:
    """Guess the kind of config from its top-level keys; ``None`` if it cannot be told."""
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


@dataclass
class CheckResult:
    """What checking one file found: its kind, problems, warnings and the config.

    ``config`` is ``None`` unless ``problems`` is empty.  ``warnings`` (only
    produced with ``require_env=False``) do not make the file invalid.
    """

    kind: ConfigKind | None
    problems: list[Problem]
    warnings: list[Problem] = field(default_factory=list)
    config: Any = None


def _check_document(
    path: str | os.PathLike[str],
    kind: ConfigKind | None,
    schemas: dict[str, _yp.Section],
    *,
    require_env: bool = True,
) -> CheckResult:
    """Check a file against ``schemas[kind]``.

    The config is built by calling the schema's class with ``path`` (absolute)
    and the checked values.  With ``require_env=False`` unset ``${NAME}``
    variables are warnings, not problems.  OSError propagates.
    """
    if kind not in (None, "node", "gateway"):
        raise ValueError(f"kind must be 'node', 'gateway' or None, not {kind!r}")
    file = os.fspath(path)
    data = Path(file).read_bytes()
    ctx = _yp.Ctx(file, Path(os.path.abspath(file)).parent, require_env=require_env)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        ctx.report(data[: exc.start].count(b"\n") + 1, "", "file is not valid UTF-8 text")
        return CheckResult(kind, ctx.problems)
    try:
        root = _yp.compose(text)
    except _yp.YamlSyntaxError as exc:
        ctx.report(exc.line, "", f"invalid YAML: {exc.message}")
        return CheckResult(kind, ctx.problems)
    if root is None:
        ctx.report(None, "", "file is empty")
        return CheckResult(kind, ctx.problems)
    if not isinstance(root, yaml.MappingNode):
        ctx.report(root, "", f"top level must be a mapping of sections, got {_yp.describe(root)}")
        return CheckResult(kind, ctx.problems)

    if kind is None:
        keys = {k.value for k, _ in root.value if isinstance(k, yaml.ScalarNode)}
        kind = _detect_kind(keys)
        if kind is None:
            why = (
                "has both node: and gateway: sections; a file configures one or the other"
                if {"node", "gateway"} <= keys
                else "cannot tell whether this is a node or a gateway config; add a node: or gateway: section"
            )
            ctx.report(_yp.line_of(root), "", why)
            return CheckResult(None, ctx.problems)

    schema = schemas[kind]
    values = _yp.check_section(ctx, root, "", None, schema)
    problems = sorted(ctx.problems, key=_position)
    warnings = sorted(ctx.warnings, key=_position)
    if problems:
        return CheckResult(kind, problems, warnings)
    return CheckResult(kind, [], warnings, schema.cls(path=Path(os.path.abspath(file)), **values))


def _position(problem: Problem) -> tuple[bool, int]:
    return (problem.line is not None, problem.line or 0)
