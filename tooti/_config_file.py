"""Reading one config file and checking it against a schema.

Decodes the file, parses it into a position-carrying YAML node graph, tells a
node config from a gateway config when the caller did not say, and runs the
schema walker of :mod:`tooti._yaml_positions`.  The schemas themselves are
passed in by :mod:`tooti.config`, so this module knows no config classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml

from tooti import _yaml_positions as _yp
from tooti._yaml_positions import Problem

ConfigKind = Literal["node", "gateway"]

# Sections only one kind of file has; used to guess the kind when neither a
# `node:` nor a `gateway:` section is present.
_NODE_ONLY = {"node", "backend", "models", "heartbeat"}
_GATEWAY_ONLY = {"gateway", "database", "registry", "routing"}


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


def _check_document(
    path: str | os.PathLike[str], kind: ConfigKind | None, schemas: dict[str, _yp.Section]
) -> tuple[ConfigKind | None, list[Problem], Any]:
    """Check a file against ``schemas[kind]``; return ``(kind, problems, config or None)``.

    The config is built by calling the schema's class with ``path`` (absolute)
    and the checked values.  OSError propagates.
    """
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
            why = (
                "has both node: and gateway: sections; a file configures one or the other"
                if {"node", "gateway"} <= keys
                else "cannot tell whether this is a node or a gateway config; add a node: or gateway: section"
            )
            ctx.report(_yp.line_of(root), "", why)
            return None, ctx.problems, None

    schema = schemas[kind]
    values = _yp.check_section(ctx, root, "", None, schema)
    problems = sorted(ctx.problems, key=lambda p: (p.line is not None, p.line or 0))
    if problems:
        return kind, problems, None
    return kind, [], schema.cls(path=Path(os.path.abspath(file)), **values)
