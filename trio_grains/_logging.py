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
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator

__all__ = ["GRAIN_ID", "SILO_ID", "GrainsContextFilter", "trace_ids_from"]

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
