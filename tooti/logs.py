"""Logging for tooti's processes: one handler on stderr, text or JSON, quiet for days.

What :func:`setup` installs, on the one handler (so every logger, ours and libraries', goes
through it):

* a policy filter: libraries' noise is demoted (py-libp2p logs each failed dial of an expected
  redial at ERROR; a dial failure is reported by tooti itself, once), libp2p ERRORs become
  WARNINGs, and a stream handler that "failed" only because shutdown cancelled it is not a
  failure (a Ctrl-C must not log exception groups);
* secrets are redacted from every message: API keys (``tt-<prefix>-<secret>``), bearer
  tokens and URL passwords, should any code ever log one;
* the current request's id (see :mod:`tooti._trace`) is attached to records logged while a
  node serves it;
* :class:`~tooti._logsummary.RepeatFilter`: the same warning repeated (a backend down under
  load) becomes its first few lines plus one summary line per episode.

``--log-format json`` writes one JSON object per line: ``ts``, ``level``, ``logger``, ``msg``,
and when present ``request_id``, ``key`` (API key prefix, never the key), ``node``, ``model``,
``status``, ``latency_ms``, ``repeats``, ``exc``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import trio

from tooti import _trace
from tooti._logsummary import RepeatFilter

LogFormat = Literal["text", "json"]

#: Extra record attributes that JSON output carries when present (``log.info(..., extra={})``).
FIELDS = ("request_id", "key", "node", "model", "status", "latency_ms", "repeats")

_NOISY = ("hypercorn.access", "httpx", "httpcore", "multiaddr")
# libp2p records that describe an expected, retried event which tooti reports itself.
_DIAL_NOISE = ("Failed to open TCP stream", "Failed to connect", "failed to dial", "Failed to upgrade")
#: gossipsub offers itself to every connected peer; nodes run no pubsub by design, so each node
#: joining a gateway made py-libp2p warn (nine lines) that the node refused /meshsub.
_PUBSUB_PROBE = ("Failed to open stream to peer", "/meshsub/")

_SECRETS = [
    (re.compile(r"\btt-([a-z0-9]+)-[A-Za-z0-9_\-]+"), r"tt-\1-***"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s,;\"']+"), r"\1***"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),
]

_repeats: RepeatFilter | None = None
_flush_hooks: list[Callable[[], None]] = []


def redact(text: str) -> str:
    """``text`` with API keys, bearer tokens and URL passwords replaced by ``***``."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def _is_pubsub_probe(record: logging.LogRecord) -> bool:
    if _PUBSUB_PROBE[0] not in str(record.msg):
        return False
    try:
        return _PUBSUB_PROBE[1] in record.getMessage()
    except (TypeError, ValueError):
        return False


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


class _Policy(logging.Filter):
    """Demotions, the shutdown rule, redaction and request context (see module docstring)."""

    def __init__(self, level: int, repeats: RepeatFilter) -> None:
        super().__init__()
        self._level = level
        self._repeats = repeats

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name.startswith("libp2p") and record.levelno >= logging.WARNING:
            text = str(record.msg)
            if any(noise in text for noise in _DIAL_NOISE) or _is_pubsub_probe(record):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            elif record.levelno >= logging.ERROR:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.args and isinstance(record.args, tuple) and "handler failed" in str(record.msg):
            # tooti.p2p.host.guarded logs (name, peer, type name, exc): an exception group of
            # nothing but Cancelled is shutdown reaching a handler, not a failure.
            if any(isinstance(a, BaseException) and _only_cancelled(a) for a in record.args):
                return False
        if record.levelno < self._level or not self._repeats.filter(record):
            return False
        if not hasattr(record, "request_id"):
            ctx = _trace.current()
            if ctx is not None:
                record.request_id = ctx.request_id
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: log it raw rather than raise here
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring for the keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                out[name] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid and rid not in text:
            text += f" [request {rid}]"
        if record.exc_info and record.exc_text:
            text = redact(text)
        return text


def setup(level: str = "INFO", fmt: LogFormat = "text", *, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger once for this process; returns the handler."""
    global _repeats
    numeric = getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    repeats = RepeatFilter()
    repeats.bind(handler.handle)
    handler.addFilter(_Policy(numeric, repeats))
    _repeats = repeats
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Records at the level reach the handler, whose policy may demote them below it.
    root.setLevel(numeric)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # `import libp2p` turns its propagation off (tooti.p2p.host turns it on again when a host
    # is built); once imported, its records belong to this handler too.
    logging.getLogger("libp2p").propagate = True
    return handler


def on_flush(hook: Callable[[], None]) -> None:
    """Also call ``hook`` (e.g. ``Outages.sweep``) whenever repeat summaries are flushed."""
    if hook not in _flush_hooks:
        _flush_hooks.append(hook)


def flush() -> None:
    """Write the summaries of repeat episodes (and outages) that have ended."""
    for hook in _flush_hooks:
        hook()
    if _repeats is not None:
        _repeats.flush()


async def flush_loop(interval: float = 1.0) -> None:
    """Run beside a process's work: writes repeat summaries as episodes end."""
    try:
        while True:
            await trio.sleep(interval)
            flush()
    finally:
        flush()
