"""Log records that say where they come from: the silo id and the grain id.

The runtime's tasks carry the ids in context variables: a silo sets ``SILO_ID`` before it
starts its tasks (they inherit it, as Trio tasks inherit the context of their spawner),
and an activation sets ``GRAIN_ID`` in its own task, so the tasks of its nursery (timers,
background work) have it too. Nothing is set per call: a turn that runs in the caller's
own task (an idle local grain) logs with the caller's context.

:class:`GrainsContextFilter` copies them onto every record it sees as ``record.silo_id``,
``record.grain_id`` and ``record.trace_id`` (``"-"`` when unknown), so a format string can
use ``%(silo_id)s`` for records of any logger. Attach it to a *handler* (a filter on a
logger does not see its children's records)::

    handler = logging.StreamHandler()
    handler.addFilter(GrainsContextFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(silo_id)s %(grain_id)s]: %(message)s"))

``trio-grains silo`` logs this way. The trace id comes from the tracer of a silo or
client that runs with tracing on (:func:`trace_ids_from`), read only when a record is
logged: nothing is set per call.

May import: nothing of trio-grains.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["GRAIN_ID", "SILO_ID", "GrainsContextFilter", "LogThrottle", "trace_ids_from"]

SILO_ID: contextvars.ContextVar[str] = contextvars.ContextVar("trio_grains_silo_id", default="-")
GRAIN_ID: contextvars.ContextVar[str] = contextvars.ContextVar("trio_grains_grain_id", default="-")
#: the ``trace_id`` methods of the running tracers (the last one answers: tracing
#: libraries keep the current span per process, so any of them sees the same one)
_trace_id_sources: list[Callable[[], str | None]] = []


@contextlib.contextmanager
def trace_ids_from(source: Callable[[], str | None]) -> Iterator[None]:
    """Log records get their ``trace_id`` from *source* while the block runs."""
    _trace_id_sources.append(source)
    try:
        yield
    finally:
        _trace_id_sources.remove(source)


class GrainsContextFilter(logging.Filter):
    """Adds ``silo_id``, ``grain_id`` and ``trace_id`` to every record (keeps them all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.silo_id = SILO_ID.get()
        record.grain_id = GRAIN_ID.get()
        record.trace_id = (_trace_id_sources[-1]() if _trace_id_sources else None) or "-"
        return True


class LogThrottle:
    """Warnings about bad input that an attacker can repeat at will, at most one per
    *interval* seconds: the first at once, later ones with how many were left unlogged
    (counters in ``statistics()`` keep the exact figures)."""

    __slots__ = ("_interval", "_logger", "_next", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()  # not trio's clock: usable outside a run, and cheap
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        if self._suppressed:
            message += " (and %d more like it not logged)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.warning(message, *args)
