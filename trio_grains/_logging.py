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

``trio-grains silo`` logs this way. ``TRACE_ID`` is for a tracing plugin to set.
"""

from __future__ import annotations

import contextvars
import logging

__all__ = ["GRAIN_ID", "SILO_ID", "TRACE_ID", "GrainsContextFilter"]

SILO_ID: contextvars.ContextVar[str] = contextvars.ContextVar("trio_grains_silo_id", default="-")
GRAIN_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "trio_grains_grain_id", default="-"
)
TRACE_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "trio_grains_trace_id", default="-"
)


class GrainsContextFilter(logging.Filter):
    """Adds ``silo_id``, ``grain_id`` and ``trace_id`` to every record (keeps them all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.silo_id = SILO_ID.get()
        record.grain_id = GRAIN_ID.get()
        record.trace_id = TRACE_ID.get()
        return True
