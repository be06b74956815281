"""Durable reminders: the reminder-table contract and the silo's reminder service.

A grain registers a named reminder (first tick after ``due`` seconds, then every
``period``); the reminder is stored in the silo's reminder table and fires whether or not
the grain is active: the service activates it and calls its ``receive_reminder(name,
status)`` method as an ordinary turn. Reminders survive deactivation and silo restarts
(with a durable table). As in Orleans, ticks are a best effort: a tick may come late (the
silo was down or busy) and, rarely, twice around a restart; missed ticks are not replayed,
the schedule continues from the next one.

Times in the table are wall-clock seconds (``time.time()``). Inside a silo they are mapped
onto Trio's clock, so a ``MockClock`` drives reminders in tests (pass
``open_silo(wall_clock=trio.current_time)`` to share one virtual clock between silos).

In a cluster, silos share one table and each reminder must fire on exactly one live silo:
:meth:`ReminderService.set_owner_filter` restricts a service to the grains its silo owns
(e.g. :func:`~trio_grains._cluster.ownership.owner_filter_for` on every membership view), and
``refresh_interval`` makes it re-read the table periodically to pick up rows written or
removed by other silos. Without a filter a service owns every reminder (one silo). A
reminder that changes owner resumes at its next tick on the new owner (a tick that a dead
owner missed is not replayed), so pick a refresh interval shorter than your due times.

A reminder table is shared, so its rows are untrusted input: tables decode each row with
:func:`checked_reminder_row` (a name, bounded times, a period of at least 1 µs), skip the ones that
fail, count them and log each once (:mod:`trio_grains._rows`). The service checks the rows
it is given again, so a table that lets a bad row through (a period of 0 would divide by
zero) costs that reminder, counted in :attr:`ReminderService.malformed_rows`, not the silo.

May import: the core up to the catalog and the dispatcher. Not the cluster, streams or the
silo: grains are called through an ``invoke`` callable, ownership comes as a filter.
"""

from __future__ import annotations

import abc
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ._exceptions import ConfigError, GrainMethodError, StorageError
from ._grain import class_info
from ._ids import GrainId
from ._rows import MalformedRows
from ._tracing import ATTR_GRAIN_ID, SpanKind, Tracer

__all__ = [
    "GrainReminder",
    "ReminderEntry",
    "ReminderService",
    "ReminderTable",
    "TickStatus",
    "checked_reminder_row",
]

log = logging.getLogger("trio_grains.reminders")

_REREAD_RETRY = 5.0  # seconds before a failed table read is retried (at most refresh_interval)


@attrs.frozen
class ReminderEntry:
    """A row of a reminder table.

    ``start_at``: wall-clock time of the first tick (epoch seconds); ``period``: seconds
    between ticks; ``etag``: set by the table, different after every upsert.
    """

    grain_id: GrainId
    name: str
    start_at: float
    period: float
    etag: str | None = None


_MAX_SECONDS = 1e15  # times and periods of a row: about 30 million years either way
_MIN_PERIOD = 1e-6  # so that (now - start_at) / period stays a finite float


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{what} is too large") from None
    if not -_MAX_SECONDS <= number <= _MAX_SECONDS:  # NaN fails too
        raise ValueError(f"{what} must be a finite number of seconds within ±1e15, got {number!r}")
    return number


def checked_reminder_row(entry: ReminderEntry) -> ReminderEntry:
    """*entry*, a row read from a table, checked strictly; its times as floats.

    Raises :class:`~trio_grains.StorageError`, and nothing else, unless ``grain_id`` is a
    :class:`GrainId`, ``name`` a non-empty string of valid text, ``start_at`` and
    ``period`` numbers (an int or a float, not a bool) within ±1e15 seconds with
    ``period`` at least a microsecond, and ``etag`` a string or ``None``. Table providers
    call it on every row they decode.
    """
    try:
        if not isinstance(entry.grain_id, GrainId):
            raise ValueError(f"grain_id must be a GrainId, got {type(entry.grain_id).__name__}")
        name = entry.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {type(name).__name__}")
        name.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
        start_at = _seconds(entry.start_at, "start_at")
        period = _seconds(entry.period, "period")
        if not period >= _MIN_PERIOD:
            raise ValueError(f"period must be at least {_MIN_PERIOD} seconds, got {period!r}")
        if entry.etag is not None and not isinstance(entry.etag, str):
            raise ValueError(f"etag must be a str, got {type(entry.etag).__name__}")
    except Exception as exc:  # ValueError from the checks; anything else is malformed too
        raise StorageError(f"not a reminder row: {exc}") from None
    if start_at is entry.start_at and period is entry.period:
        return entry
    return attrs.evolve(entry, start_at=start_at, period=period)


def _row_key(row: ReminderEntry) -> str:
    return f"{getattr(row, 'grain_id', '?')}.{getattr(row, 'name', '?')}"


def _checked_row(row: ReminderEntry) -> ReminderEntry:
    """:func:`checked_reminder_row`, its error naming the row (for the service's log)."""
    try:
        return checked_reminder_row(row)
    except StorageError as exc:
        raise StorageError(f"row {_row_key(row)!r}: {exc}") from None


@attrs.frozen
class GrainReminder:
    """A grain's handle on one of its reminders."""

    grain_id: GrainId
    name: str
    start_at: float
    period: float


@attrs.frozen
class TickStatus:
    """Passed to ``receive_reminder``: when the schedule started, its period, this tick."""

    first_tick_time: float
    period: float
    current_tick_time: float


class ReminderTable(abc.ABC):
    """The contract of a reminder table provider. Check yours with ``trio_grains.testing``.

    Rows are keyed by ``(grain_id, name)``. Translate backend errors into
    :class:`~trio_grains.StorageError`; take no timeout parameters (callers use cancel
    scopes).
    """

    @abc.abstractmethod
    async def read_all(self) -> list[ReminderEntry]:
        """Every row (the silo reads them when it starts)."""

    @abc.abstractmethod
    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        """The rows of one grain, in any order."""

    @abc.abstractmethod
    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        """One row, or ``None``."""

    @abc.abstractmethod
    async def upsert(self, entry: ReminderEntry) -> str:
        """Insert or replace the row (``entry.etag`` is ignored); return its new ETag."""

    @abc.abstractmethod
    async def remove(self, grain_id: GrainId, name: str, etag: str | None) -> bool:
        """Delete the row if its ETag is *etag* (any ETag when ``None``); True if deleted."""


def _first_tick_after(entry: ReminderEntry, now: float) -> float:
    """The next tick time at or after *now* (a tick missed while down fires once, now)."""
    if now <= entry.start_at:
        return entry.start_at
    periods = math.floor((now - entry.start_at) / entry.period)
    last = entry.start_at + periods * entry.period
    return last if now - last < 1e-9 else now


def _resume_at(entry: ReminderEntry, now: float) -> float:
    """The first tick of the schedule at or after *now* (no catching up: for hand-overs)."""
    if now <= entry.start_at:
        return entry.start_at
    periods = math.ceil((now - entry.start_at) / entry.period - 1e-9)
    return entry.start_at + periods * entry.period


def _next_slot(entry: ReminderEntry, after: float) -> float:
    """The first tick of the schedule strictly after *after* (keeps the schedule's phase)."""
    if after < entry.start_at:
        return entry.start_at
    return entry.start_at + (math.floor((after - entry.start_at) / entry.period) + 1) * entry.period


@attrs.define(eq=False)
class ReminderService:
    """Schedules the reminders of the silo's table that it owns and delivers their ticks.

    ``refresh_interval``: re-read the whole table that often (``None``: only at start and
    when the owner filter changes).
    """

    table: ReminderTable
    #: ``invoke(grain_id, method, args)``: the silo dispatcher's ``invoke_by_id``
    invoke: Callable[[GrainId, str, tuple[Any, ...]], Awaitable[Any]]
    minimum_period: float
    wall_clock: Callable[[], float] | None = None
    refresh_interval: float | None = None
    tracer: Tracer | None = None
    _entries: dict[tuple[GrainId, str], ReminderEntry] = attrs.field(factory=dict, init=False)
    _heap: list[tuple[float, int, GrainId, str]] = attrs.field(factory=list, init=False)
    _seq: int = attrs.field(default=0, init=False)
    _seqs: dict[tuple[GrainId, str], int] = attrs.field(factory=dict, init=False)
    _wakeup: trio.Event = attrs.field(factory=trio.Event, init=False)
    _offset: float = attrs.field(default=0.0, init=False)
    _owns: Callable[[GrainId], bool] | None = attrs.field(default=None, init=False)
    _reread: bool = attrs.field(default=False, init=False)
    # keys registered or unregistered here while a table read is under way (None: no read)
    _touched: set[tuple[GrainId, str]] | None = attrs.field(default=None, init=False)
    ticks_delivered: int = attrs.field(default=0, init=False)
    _malformed: MalformedRows = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.refresh_interval is not None and not self.refresh_interval > 0:
            raise ValueError(f"refresh_interval must be > 0 seconds, got {self.refresh_interval}")
        self._malformed = MalformedRows(f"reminder table {self.table!r}", log)

    @property
    def malformed_rows(self) -> int:
        """Rows the table returned that are no reminder (skipped; each row once). Rows
        the table itself skipped are counted by the table (its ``malformed_rows``)."""
        return self._malformed.count

    def _checked(self, rows: list[ReminderEntry]) -> list[ReminderEntry]:
        """The rows of *rows* that pass :func:`checked_reminder_row`; the others skipped."""
        return self._malformed.decode_all(
            rows, _checked_row, StorageError, _row_key, lambda row: getattr(row, "etag", None)
        )

    def now(self) -> float:
        """Wall-clock seconds, advancing with Trio's clock."""
        return trio.current_time() + self._offset

    def owns(self, grain_id: GrainId) -> bool:
        """Whether this service fires the reminders of *grain_id* (see set_owner_filter)."""
        return self._owns is None or self._owns(grain_id)

    def set_owner_filter(self, owns: Callable[[GrainId], bool] | None) -> None:
        """Fire only the reminders of grains for which *owns* is true (``None``: all).

        Reminders no longer owned are dropped at once; the table is re-read (by
        :meth:`run`) to schedule the ones now owned.
        """
        self._owns = owns
        for grain_id, name in list(self._entries):
            if not self.owns(grain_id):
                self._unschedule(grain_id, name)
        self._reread = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        wall = self.wall_clock or time.time
        self._offset = wall() - trio.current_time()
        self._reread = False
        await self._refresh(catch_up=True)
        interval = math.inf if self.refresh_interval is None else self.refresh_interval
        next_refresh = trio.current_time() + interval
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._wakeup = trio.Event()
                if self._reread or trio.current_time() >= next_refresh:
                    self._reread = False
                    try:
                        await self._refresh()
                        next_refresh = trio.current_time() + interval
                    except Exception as exc:
                        retry = min(interval, _REREAD_RETRY)
                        log.warning(
                            "reading the reminder table failed, retrying in %s s: %s", retry, exc
                        )
                        next_refresh = trio.current_time() + retry
                    continue
                deadline = next_refresh
                if self._heap:
                    when, seq, grain_id, name = self._heap[0]
                    found = self._entries.get((grain_id, name))
                    if found is None or seq != self._seqs.get((grain_id, name)):
                        heapq.heappop(self._heap)  # unregistered or rescheduled since
                        continue
                    entry = found
                    now = self.now()
                    if when <= now:
                        heapq.heappop(self._heap)
                        nursery.start_soon(self._deliver, entry, when)
                        self._push(entry, _next_slot(entry, when))
                        continue
                    deadline = min(deadline, trio.current_time() + (when - now))
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()

    async def _refresh(self, *, catch_up: bool = False) -> None:
        """Schedule the owned rows of the table, and drop what is no longer there or owned.

        At start (*catch_up*) a tick missed while the silo was down fires at once; a row
        picked up later (written by another silo, or moved here by the owner filter)
        resumes at its next tick, since its previous owner may have fired the last one.
        """
        touched: set[tuple[GrainId, str]] = set()
        self._touched = touched
        try:
            rows = self._checked(await self.table.read_all())
        finally:
            self._touched = None
        current = {(r.grain_id, r.name): r for r in rows if self.owns(r.grain_id)}
        for key in list(self._entries):
            if key not in current and key not in touched:
                self._unschedule(*key)
        for key, row in current.items():
            if key in touched:
                continue  # changed here after the read: the local state is newer
            scheduled = self._entries.get(key)
            if scheduled is None or scheduled.etag != row.etag:
                self._schedule(row, catch_up=catch_up)

    def _push(self, entry: ReminderEntry, when: float) -> None:
        self._seq += 1
        key = (entry.grain_id, entry.name)
        self._seqs[key] = self._seq
        heapq.heappush(self._heap, (when, self._seq, entry.grain_id, entry.name))
        self._wakeup.set()

    def _schedule(self, entry: ReminderEntry, *, catch_up: bool = True) -> None:
        self._entries[(entry.grain_id, entry.name)] = entry
        now = self.now()
        self._push(entry, _first_tick_after(entry, now) if catch_up else _resume_at(entry, now))

    def _touch(self, grain_id: GrainId, name: str) -> None:
        if self._touched is not None:
            self._touched.add((grain_id, name))

    def _unschedule(self, grain_id: GrainId, name: str) -> None:
        self._entries.pop((grain_id, name), None)
        self._seqs.pop((grain_id, name), None)
        self._wakeup.set()

    async def _deliver(self, entry: ReminderEntry, when: float) -> None:
        if not self.owns(entry.grain_id):
            return  # the filter changed after the tick was taken off the heap
        status = TickStatus(entry.start_at, entry.period, when)
        tracer = self.tracer
        try:
            if tracer is None:
                await self.invoke(entry.grain_id, "receive_reminder", (entry.name, status))
            else:
                attributes = {
                    ATTR_GRAIN_ID: str(entry.grain_id),
                    "trio_grains.reminder": entry.name,
                }
                with tracer.span(
                    f"reminder {entry.name}", SpanKind.INTERNAL, attributes, root=True
                ):
                    await self.invoke(entry.grain_id, "receive_reminder", (entry.name, status))
            self.ticks_delivered += 1
        except Exception:
            log.exception("reminder %r of %s failed; it goes on", entry.name, entry.grain_id)

    # -- the grain-facing operations ----------------------------------------------------------

    async def register(
        self, grain_id: GrainId, cls: type, name: str, due: float, period: float
    ) -> GrainReminder:
        if "receive_reminder" not in class_info(cls).methods:
            raise GrainMethodError(
                f"{cls.__qualname__} registers reminder {name!r} but has no "
                "'async def receive_reminder(self, name: str, status: TickStatus)' method"
            )
        if not name:
            raise ValueError("a reminder needs a non-empty name")
        if due < 0:
            raise ValueError(f"reminder due time must be >= 0 seconds, got {due}")
        if period < self.minimum_period:
            raise ConfigError(
                f"reminder period {period} s is below the minimum of {self.minimum_period} s; "
                "use a timer for short periods, or lower SiloConfig.minimum_reminder_period"
            )
        entry = ReminderEntry(grain_id, name, self.now() + due, float(period))
        etag = await self.table.upsert(entry)
        entry = attrs.evolve(entry, etag=etag)
        self._touch(grain_id, name)
        if self.owns(grain_id):
            self._schedule(entry)
        else:
            self._unschedule(grain_id, name)  # another silo fires it
        return GrainReminder(grain_id, name, entry.start_at, entry.period)

    async def unregister(self, grain_id: GrainId, name: str) -> bool:
        removed = await self.table.remove(grain_id, name, None)
        self._touch(grain_id, name)
        self._unschedule(grain_id, name)
        return removed

    async def list(self, grain_id: GrainId) -> list[GrainReminder]:
        rows = self._checked(await self.table.read_grain(grain_id))
        return sorted(
            (GrainReminder(r.grain_id, r.name, r.start_at, r.period) for r in rows),
            key=lambda r: r.name,
        )

    def scheduled(self) -> int:
        return len(self._entries)
