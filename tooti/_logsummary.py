"""Logs fit for days of running: one line per event, not one per failed request.

Two helpers:

* :class:`Outages` tracks episodes of failure per subject (a node, a gateway, a backend): the
  first failure logs that an outage started, further failures are only counted, and the first
  success (or ``quiet`` seconds without failure, seen by :meth:`Outages.sweep`) logs that it
  ended, with how many failures it saw and for how long. A long outage also logs a progress
  line every ``report_every`` seconds.
* :class:`RepeatFilter` does the same for log records at the logging layer, for code that logs
  per event: records of one template (logger, level, format string) beyond the first ``burst``
  in an episode are held back and counted; :meth:`RepeatFilter.flush` writes one summary line
  per template when the episode ends (or every ``report_every`` seconds while it lasts).

Both take a clock (seconds, monotonic) so tests can drive time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class _Episode:
    started: float
    last: float
    reported: float
    failures: int = 1
    since_report: int = 0
    detail: str = ""


class Outages:
    """Failure episodes per subject, logged as start / progress / end lines on ``logger``.

    ``what`` names the kind of subject in messages, e.g. ``"node"``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        quiet: float = 30.0,
        report_every: float = 60.0,
        clock: Clock = time.monotonic,
        max_subjects: int = 10_000,
    ) -> None:
        self._log = logger
        self._what = what
        self._quiet = quiet
        self._report_every = report_every
        self._clock = clock
        self._max = max_subjects
        self._open: dict[str, _Episode] = {}

    def failure(self, subject: str, detail: str = "") -> None:
        """Count one failure of ``subject``; logs a WARNING only when an outage starts."""
        now = self._clock()
        ep = self._open.get(subject)
        if ep is None:
            if len(self._open) >= self._max:
                return  # bounded memory; the subjects already open still report
            self._open[subject] = _Episode(now, now, now, detail=detail)
            self._log.warning("%s %s failing: %s", self._what, subject, detail or "request failed")
            return
        ep.failures += 1
        ep.since_report += 1
        ep.last = now
        if now - ep.reported >= self._report_every:
            self._log.warning(
                "%s %s still failing: %d failures in the last %.0fs (%d since %.0fs ago)",
                self._what,
                subject,
                ep.since_report,
                now - ep.reported,
                ep.failures,
                now - ep.started,
            )
            ep.reported, ep.since_report = now, 0

    def success(self, subject: str) -> None:
        """``subject`` worked: ends its outage, if one is open (cheap when none is)."""
        if self._open:
            ep = self._open.pop(subject, None)
            if ep is not None:
                self._ended(subject, ep, "recovered")

    def sweep(self) -> None:
        """End outages with no failure for ``quiet`` seconds (their subject may be gone)."""
        now = self._clock()
        for subject, ep in list(self._open.items()):
            if now - ep.last >= self._quiet:
                del self._open[subject]
                self._ended(subject, ep, "no failures for %.0fs" % (now - ep.last))

    def _ended(self, subject: str, ep: _Episode, how: str) -> None:
        self._log.warning(
            "%s %s outage ended (%s): %d failed over %.1fs",
            self._what,
            subject,
            how,
            ep.failures,
            ep.last - ep.started,
        )

    def open_subjects(self) -> list[str]:
        return list(self._open)


@dataclass
class _Held:
    first: float
    last: float
    reported: float
    passed: int = 1
    held: int = 0
    sample: logging.LogRecord | None = field(default=None, repr=False)


class RepeatFilter(logging.Filter):
    """Collapses repeats of one log template into a summary line (see module docstring).

    Applies to records at ``min_level`` and above; others pass untouched. Thread-safe (log
    records may come from any thread); cheap for records that pass: one dict lookup.
    """

    def __init__(
        self,
        *,
        burst: int = 3,
        quiet: float = 10.0,
        report_every: float = 60.0,
        min_level: int = logging.WARNING,
        clock: Clock = time.monotonic,
        max_templates: int = 1000,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._quiet = quiet
        self._report_every = report_every
        self._min = min_level
        self._clock = clock
        self._max = max_templates
        self._held: dict[tuple[str, int, str], _Held] = {}
        self._lock = threading.Lock()
        self._emit: Callable[[logging.LogRecord], object] | None = None

    def bind(self, emit: Callable[[logging.LogRecord], object]) -> None:
        """Where summary records go (normally the handler this filter sits on)."""
        self._emit = emit

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self._min or getattr(record, "summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            h = self._held.get(key)
            if h is None or now - h.last >= self._quiet:
                if h is not None and h.held:
                    self._summarise(key, h, now, ended=True)
                if len(self._held) >= self._max and key not in self._held:
                    return True
                self._held[key] = _Held(now, now, now)
                return True
            h.last = now
            if h.passed < self._burst:
                h.passed += 1
                return True
            h.held += 1
            h.sample = record
            if now - h.reported >= self._report_every:
                self._summarise(key, h, now, ended=False)
            return False

    def flush(self) -> None:
        """Write summaries of episodes that have gone quiet; call it every second or so."""
        now = self._clock()
        with self._lock:
            for key, h in list(self._held.items()):
                if now - h.last >= self._quiet:
                    del self._held[key]
                    if h.held:
                        self._summarise(key, h, now, ended=True)

    def _summarise(self, key: tuple[str, int, str], h: _Held, now: float, *, ended: bool) -> None:
        sample = h.sample
        if sample is None or self._emit is None:
            return
        how = "ended" if ended else "still happening"
        text = (
            f"repeated {h.held} more times over {h.last - h.first:.1f}s ({how}); last: {sample.getMessage()}"
        )
        summary = logging.LogRecord(
            sample.name, sample.levelno, sample.pathname, sample.lineno, text, None, None
        )
        summary.summary = True
        summary.repeats = h.held
        h.held = 0
        h.reported = now
        self._emit(summary)
