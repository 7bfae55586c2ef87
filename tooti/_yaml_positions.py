"""Position-aware checking of YAML documents against simple schemas.

PyYAML's ``safe_load`` throws away line numbers and silently keeps the last of
two duplicate keys.  Config checking needs both, so this module works on the
*node graph* produced by :func:`yaml.compose` instead: every node still carries
its source mark, and duplicate keys are still visible as separate entries.

On top of that sits a small schema walker: a :class:`Section` maps keys to
:class:`Field` checkers, and :func:`check_section` validates a mapping node,
recording a :class:`Problem` (with line and dotted key path) for everything
wrong instead of stopping at the first error.

Nothing here knows about tooti's settings; :mod:`tooti.config` builds on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "INVALID",
    "Checker",
    "Ctx",
    "Duplicate",
    "Entry",
    "Field",
    "PostHook",
    "Problem",
    "Section",
    "YamlSyntaxError",
    "check_section",
    "compose",
    "construct_scalar",
    "describe",
    "integer",
    "is_merge_key",
    "is_null",
    "join",
    "line_of",
    "list_of",
    "mapping_entries",
    "nonempty_string",
    "one_of",
    "positive_number",
    "string",
    "type_error",
]

_TAG = "tag:yaml.org,2002:"
STR = _TAG + "str"
INT = _TAG + "int"
FLOAT = _TAG + "float"
BOOL = _TAG + "bool"
NULL = _TAG + "null"
_MERGE = _TAG + "merge"

# Human names for the scalar tags the safe resolver produces; used in
# "expected X, got Y" messages.
_SCALAR_KINDS = {
    STR: "a string",
    INT: "an integer",
    FLOAT: "a number",
    BOOL: "a boolean",
    NULL: "nothing (null)",
    _TAG + "timestamp": "a date",
    _TAG + "binary": "binary data",
}


class YamlSyntaxError(Exception):
    """The text is not well-formed YAML (or holds more than one document).

    ``line`` is 1-based, or ``None`` when PyYAML gave no position.
    """

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class Entry:
    """One ``key: value`` pair of a mapping, with both nodes kept for positions."""

    key: str
    key_node: yaml.Node
    value_node: yaml.Node


@dataclass(frozen=True)
class Duplicate:
    """A key that appears more than once in the same mapping.

    ``node`` is the later (winning) occurrence; ``first_line`` is where the
    key was first written.
    """

    key: str
    node: yaml.Node
    first_line: int


def compose(text: str) -> yaml.Node | None:
    """Parse ``text`` into a node graph; ``None`` for an empty document.

    Raises :class:`YamlSyntaxError` for malformed YAML or a multi-document
    stream.  Only the safe resolver is used, so no Python objects are built.
    """
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        message = ", ".join(parts) or "invalid YAML"
        raise YamlSyntaxError(message, None if mark is None else mark.line + 1) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc) or "invalid YAML", None) from None


def line_of(node: yaml.Node) -> int:
    """Return the 1-based line on which ``node`` starts."""
    return node.start_mark.line + 1


def describe(node: yaml.Node) -> str:
    """Describe what kind of value ``node`` is, for error messages.

    Never includes the value itself: the node might hold a secret.
    """
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _SCALAR_KINDS.get(node.tag, f"a value tagged {node.tag}")


def mapping_entries(
    node: yaml.MappingNode,
) -> tuple[dict[str, Entry], list[Duplicate], list[yaml.Node]]:
    """Split a mapping node into entries, duplicates and unusable keys.

    Returns ``(entries, duplicates, bad_keys)``.  ``entries`` maps each string
    key to its *last* occurrence, matching what ``yaml.safe_load`` would keep,
    so the checker validates the value the program would actually see.
    ``bad_keys`` holds key nodes that are not plain strings (numbers, lists,
    ``<<`` merge keys), which no config section accepts.
    """
    entries: dict[str, Entry] = {}
    duplicates: list[Duplicate] = []
    bad_keys: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == STR):
            bad_keys.append(key_node)
            continue
        key = key_node.value
        previous = entries.get(key)
        if previous is not None:
            duplicates.append(Duplicate(key, key_node, line_of(previous.key_node)))
        entries[key] = Entry(key, key_node, value_node)
    return entries, duplicates, bad_keys


def is_merge_key(node: yaml.Node) -> bool:
    """Whether ``node`` is a YAML ``<<`` merge key."""
    return node.tag == _MERGE


def construct_scalar(node: yaml.ScalarNode) -> object:
    """Build the Python value of a scalar node using the safe constructor.

    Callers check ``node.tag`` first, so only standard scalar tags get here.
    """
    # A fresh constructor per call: SafeConstructor caches every node it has
    # built, and scalars are cheap enough that sharing buys nothing.
    return yaml.constructor.SafeConstructor().construct_object(node)


# --------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file.

    ``line`` is 1-based and points at the offending key or value; it is
    ``None`` when the problem has no place in the file (a missing top-level
    section, an environment override).  ``key`` is a dotted path such as
    ``network.bootstrap[1]``, or ``""`` for whole-file problems.
    """

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form: ``{"file", "line", "key", "message"}``."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------
# Checking machinery.  A checker validates one value node and either returns
# the Python value or records a problem and returns INVALID; it never raises,
# so one pass over the file collects every problem.


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


@dataclass
class Ctx:
    """State of one file's check: where problems go and where paths resolve."""

    file: str
    base_dir: Path  # relative paths in the file resolve against this
    problems: list[Problem] = field(default_factory=list)
    # False for a check that does not hold the deployment's environment (CI):
    # checkers then call warn() for what only the environment can supply.
    require_env: bool = True
    warnings: list[Problem] = field(default_factory=list)

    def report(self, where: yaml.Node | int | None, key: str, message: str) -> Any:
        """Record a problem at a node (or line) and return ``INVALID``."""
        line = line_of(where) if isinstance(where, yaml.Node) else where
        self.problems.append(Problem(self.file, line, key, message))
        return INVALID

    def warn(self, where: yaml.Node | int | None, key: str, message: str) -> None:
        """Record a warning: reported, but the file still counts as valid."""
        line = line_of(where) if isinstance(where, yaml.Node) else where
        self.warnings.append(Problem(self.file, line, key, message))


Checker = Callable[[Ctx, yaml.Node, str], Any]
# Runs after a section's fields: (ctx, entries, values, path, line of section).
PostHook = Callable[[Ctx, dict[str, Entry], dict[str, Any], str, int | None], None]


@dataclass(frozen=True)
class Field:
    """How one key of a section is checked: a value checker or a nested section."""

    check: Checker | None = None
    section: Section | None = None  # set instead of check for nested sections
    required: bool = False
    null_is_default: bool = False  # `key:` with no value means "use the default"


@dataclass(frozen=True)
class Section:
    """A mapping's allowed keys and the dataclass its values build."""

    cls: type
    fields: dict[str, Field]
    post: PostHook | None = None


def join(path: str, key: str) -> str:
    """Extend a dotted key path: ``join("network", "listen") == "network.listen"``."""
    return f"{path}.{key}" if path else key


def check_section(
    ctx: Ctx, node: yaml.Node | None, path: str, line: int | None, spec: Section
) -> dict[str, Any]:
    """Check a mapping against ``spec``; return the valid field values.

    ``node`` is ``None`` for an absent section, and ``line`` is where the
    section's key sits (used for "missing field" problems).
    """
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == NULL):
        entries: dict[str, Entry] = {}  # an empty `section:` is an empty mapping
    elif not isinstance(node, yaml.MappingNode):
        ctx.report(node, path, f"expected a mapping, got {describe(node)}")
        return {}
    else:
        entries, duplicates, bad_keys = mapping_entries(node)
        for dup in duplicates:
            ctx.report(
                dup.node,
                join(path, dup.key),
                f"duplicate key (first set on line {dup.first_line}); YAML would keep only this one",
            )
        for key_node in bad_keys:
            why = (
                "merge keys (<<) are not supported"
                if is_merge_key(key_node)
                else (f"keys must be strings, got {describe(key_node)}")
            )
            ctx.report(key_node, path, why)

    values: dict[str, Any] = {}
    for key, entry in entries.items():
        spec_field = spec.fields.get(key)
        key_path = join(path, key)
        if spec_field is None:
            ctx.report(entry.key_node, key_path, _unknown_key_message(key, spec.fields))
            continue
        value_node = entry.value_node
        if spec_field.null_is_default and is_null(value_node):
            continue
        if spec_field.section is not None:
            sub = check_section(ctx, value_node, key_path, line_of(entry.key_node), spec_field.section)
            # Invalid fields fall back to dataclass defaults; the result only
            # reaches callers when no problems were recorded.
            value = spec_field.section.cls(**sub)
        else:
            assert spec_field.check is not None
            value = spec_field.check(ctx, value_node, key_path)
        if value is not INVALID:
            values[key] = value

    for key, spec_field in spec.fields.items():
        if key in entries:
            continue
        if spec_field.required:
            noun = "section" if spec_field.section is not None else "key"
            ctx.report(line, join(path, key), f"missing required {noun}")
        elif spec_field.section is not None:
            values[key] = spec_field.section.cls()
    if spec.post is not None:
        spec.post(ctx, entries, values, path, line)
    return values


def _unknown_key_message(key: str, known: dict[str, Field]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    return f"unknown key {key!r} (expected one of: {', '.join(known)})"


def is_null(node: yaml.Node) -> bool:
    """Whether ``node`` is YAML null (``~``, ``null`` or nothing at all)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL


def type_error(ctx: Ctx, node: yaml.Node, path: str, expected: str) -> Any:
    """Report "expected X, got Y" without echoing the value; return INVALID."""
    got = describe(node)
    hint = ""
    if expected == "a string" and isinstance(node, yaml.ScalarNode) and not is_null(node):
        hint = " (put it in quotes)"
    return ctx.report(node, path, f"expected {expected}, got {got}{hint}")


# --------------------------------------------------------------------------
# Value checkers


def string(ctx: Ctx, node: yaml.Node, path: str) -> Any:
    """Any string, possibly empty."""
    if isinstance(node, yaml.ScalarNode) and node.tag == STR:
        return node.value
    return type_error(ctx, node, path, "a string")


def nonempty_string(ctx: Ctx, node: yaml.Node, path: str) -> Any:
    """A string with at least one non-blank character."""
    value = string(ctx, node, path)
    if value is not INVALID and not value.strip():
        return ctx.report(node, path, "must not be empty")
    return value


def integer(minimum: int, maximum: int | None = None) -> Checker:
    """Checker for an integer in ``minimum..maximum`` (no upper bound if None)."""

    def check(ctx: Ctx, node: yaml.Node, path: str) -> Any:
        # bool is a distinct YAML tag, so `true` never sneaks in as 1.
        if not (isinstance(node, yaml.ScalarNode) and node.tag == INT):
            return type_error(ctx, node, path, "an integer")
        value = construct_scalar(node)
        assert isinstance(value, int)
        if maximum is None and value < minimum:
            return ctx.report(node, path, f"must be at least {minimum}, got {value}")
        if maximum is not None and not minimum <= value <= maximum:
            return ctx.report(node, path, f"must be between {minimum} and {maximum}, got {value}")
        return value

    return check


def positive_number(ctx: Ctx, node: yaml.Node, path: str) -> Any:
    """A finite number > 0, returned as float; integers are accepted."""
    if not (isinstance(node, yaml.ScalarNode) and node.tag in (INT, FLOAT)):
        return type_error(ctx, node, path, "a number")
    try:
        value = float(construct_scalar(node))  # type: ignore[arg-type]
    except OverflowError:  # an integer literal too large for a float
        value = math.inf
    if not math.isfinite(value):
        return ctx.report(node, path, "must be a finite number")
    if value <= 0:
        return ctx.report(node, path, f"must be greater than 0, got {value:g}")
    return value


def one_of(*choices: str) -> Checker:
    """Checker for a string that must be one of ``choices``."""

    def check(ctx: Ctx, node: yaml.Node, path: str) -> Any:
        value = string(ctx, node, path)
        if value is INVALID or value in choices:
            return value
        listed = ", ".join(repr(c) for c in choices)
        # Stricter than for keys: choices are short words, and a far-fetched
        # suggestion ("tokens" -> "open") misleads more than it helps.
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ctx.report(node, path, f"must be one of {listed}, got {value!r}{hint}")

    return check


def list_of(item: Checker, *, min_items: int = 0) -> Checker:
    """Checker for a list whose items all pass ``item``; returns a tuple."""

    def check(ctx: Ctx, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.SequenceNode):
            return type_error(ctx, node, path, "a list")
        values = [item(ctx, child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        if len(values) < min_items:
            noun = "entry" if min_items == 1 else "entries"
            return ctx.report(node, path, f"must list at least {min_items} {noun}")
        if any(v is INVALID for v in values):
            return INVALID
        return tuple(values)

    return check
