"""Cluster membership: the membership-table contract, views, and the per-silo service.

Every silo of a cluster has one row (a :class:`SiloEntry`) in a shared membership table.
A silo *joins* (status ``JOINING``), becomes ``ACTIVE`` when it serves, heartbeats its row
periodically, and on a graceful exit goes ``SHUTTING_DOWN`` and *leaves* (its row is
removed). A silo whose heartbeats stop is declared ``DEAD`` by any live silo that notices
(idempotent: ``DEAD`` is final, and the declaration is a compare-and-set on the version
that was observed to be stale, so a silo that heartbeats meanwhile is not declared dead).

Failure detection uses *local observation*: silo A declares silo B dead when A has seen no
change of B's row for ``dead_after`` seconds of A's own (Trio) clock, so wall clocks of
different machines never need to agree, and a ``MockClock`` drives it in tests.

A silo that is declared dead must stop serving: :class:`MembershipService` raises
:class:`SiloDeclaredDeadError` into its owner (inside an exception group, from the service's
nursery) as soon as it sees its own row ``DEAD`` or gone, or its heartbeat is refused. A silo
that cannot heartbeat for ``dead_after`` seconds (cut off from the table) *presumes* itself
dead and stops as well (self-fencing), since the others are about to declare it dead and
cannot tell it so.

Tables are providers: :class:`MemoryMembershipTable` here (one process), a JetStream KV
bucket in ``trio_grains_nats.membership``.
"""

from __future__ import annotations

import abc
import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType

import attrs
import trio

from ._exceptions import (
    MembershipError,
    MembershipUnavailableError,
    SiloAlreadyJoinedError,
    SiloDeclaredDeadError,
)

__all__ = [
    "MembershipError",
    "MembershipService",
    "MembershipTable",
    "MembershipUnavailableError",
    "MembershipView",
    "MemoryMembershipTable",
    "SiloAlreadyJoinedError",
    "SiloDeclaredDeadError",
    "SiloEntry",
    "SiloStatus",
]

log = logging.getLogger("trio_grains.membership")


# --- errors (the lead may move these into _exceptions.py) -----------------------------------


# --- values ---------------------------------------------------------------------------------


class SiloStatus(enum.Enum):
    """The life cycle of a silo in the table; ``DEAD`` is final."""

    JOINING = "joining"
    ACTIVE = "active"
    SHUTTING_DOWN = "shutting_down"
    DEAD = "dead"


def _to_roles(roles: Iterable[str]) -> frozenset[str]:
    return frozenset(roles)


@attrs.frozen
class SiloEntry:
    """One silo's row in the membership table.

    ``address``: where other silos reach it (e.g. its NATS subject); ``started_at`` and
    ``heartbeat_at``: wall-clock seconds (informational; failure detection does not compare
    clocks); ``version``: set by the table, strictly larger after every write of the row,
    and comparable with :attr:`MembershipView.version`.
    """

    silo_id: str
    address: str
    status: SiloStatus = SiloStatus.JOINING
    roles: frozenset[str] = attrs.field(default=frozenset(), converter=_to_roles)
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    version: int = 0

    @property
    def alive(self) -> bool:
        """Not ``DEAD``."""
        return self.status is not SiloStatus.DEAD


def _freeze_entries(entries: Mapping[str, SiloEntry]) -> Mapping[str, SiloEntry]:
    return dict(sorted(entries.items()))


@attrs.frozen(hash=False)
class MembershipView:
    """A snapshot of the table: ``entries`` by silo id (``DEAD`` rows included).

    ``version`` increases strictly from one view to the next of a watch (it is the
    version of the table's latest write that the view includes).
    """

    entries: Mapping[str, SiloEntry] = attrs.field(factory=dict, converter=_freeze_entries)
    version: int = 0

    def active(self) -> list[SiloEntry]:
        """The ``ACTIVE`` silos, sorted by silo id."""
        return [e for e in self.entries.values() if e.status is SiloStatus.ACTIVE]

    def alive(self) -> list[SiloEntry]:
        """Every silo that is not ``DEAD`` (joining and shutting down too), by silo id."""
        return [e for e in self.entries.values() if e.alive]

    def get(self, silo_id: str) -> SiloEntry | None:
        return self.entries.get(silo_id)

    def status_of(self, silo_id: str) -> SiloStatus | None:
        """The silo's status, ``None`` if it is not in the view."""
        entry = self.entries.get(silo_id)
        return None if entry is None else entry.status


# --- the contract ---------------------------------------------------------------------------


class MembershipTable(abc.ABC):
    """The contract of a membership table provider.

    Rows are keyed by silo id. Every write gives the row a larger ``version``. Translate
    transient backend errors into :class:`MembershipUnavailableError`; take no timeout
    parameters (callers use cancel scopes). One table object may serve several silos.
    """

    @abc.abstractmethod
    async def join(self, entry: SiloEntry) -> SiloEntry:
        """Add the silo's row (``heartbeat_at`` and ``version`` are set by the table) and
        return it as stored.

        Raises :class:`SiloAlreadyJoinedError` if a row with this silo id exists and is not
        ``DEAD`` (a ``DEAD`` row is replaced).
        """

    @abc.abstractmethod
    async def heartbeat(self, silo_id: str) -> SiloEntry:
        """Refresh the row's ``heartbeat_at`` (a new version); return the stored row.

        Raises :class:`SiloDeclaredDeadError` if the row is ``DEAD`` or absent: the silo
        must stop serving. Never overwrites a concurrent ``DEAD``.
        """

    @abc.abstractmethod
    async def set_status(
        self, silo_id: str, status: SiloStatus, *, if_version: int | None = None
    ) -> SiloEntry | None:
        """Set the row's status; return the row as stored afterwards, ``None`` if absent.

        With *if_version*, change nothing unless the stored version is *if_version* (then
        the stored row is returned unchanged: compare its status). ``DEAD`` is final:
        setting ``DEAD`` again returns the row unchanged, setting anything else on a
        ``DEAD`` row raises :class:`SiloDeclaredDeadError`.
        """

    @abc.abstractmethod
    async def leave(self, silo_id: str) -> None:
        """Remove the silo's row (nothing happens if it is absent)."""

    @abc.abstractmethod
    async def snapshot(self) -> MembershipView:
        """The current rows."""

    @abc.abstractmethod
    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[MembershipView]]:
        """``async with table.watch() as views: async for view in views: ...``

        The first view is the current table; then a view after each change (a consumer
        that falls behind may get only the latest of several changes; versions increase
        strictly). Iteration ends only when the block is left (or raises
        :class:`MembershipUnavailableError` if the backend is lost).
        """


# --- in memory ------------------------------------------------------------------------------


@attrs.define(eq=False)
class MemoryMembershipTable(MembershipTable):
    """A table in this process (tests, single-process clusters). ``DEAD`` rows stay."""

    clock: Callable[[], float] = time.time
    _rows: dict[str, SiloEntry] = attrs.field(factory=dict, init=False)
    _version: int = attrs.field(default=0, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def _store(self, entry: SiloEntry) -> SiloEntry:
        self._version += 1
        entry = attrs.evolve(entry, version=self._version)
        self._rows[entry.silo_id] = entry
        self._notify()
        return entry

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def join(self, entry: SiloEntry) -> SiloEntry:
        await trio.lowlevel.checkpoint()
        old = self._rows.get(entry.silo_id)
        if old is not None and old.alive:
            raise SiloAlreadyJoinedError(
                f"silo {entry.silo_id!r} is already a member ({old.status.name}): "
                "give every silo incarnation its own id"
            )
        return self._store(attrs.evolve(entry, heartbeat_at=self.clock()))

    async def heartbeat(self, silo_id: str) -> SiloEntry:
        await trio.lowlevel.checkpoint()
        old = self._rows.get(silo_id)
        _check_alive(silo_id, old)
        assert old is not None
        return self._store(attrs.evolve(old, heartbeat_at=self.clock()))

    async def set_status(
        self, silo_id: str, status: SiloStatus, *, if_version: int | None = None
    ) -> SiloEntry | None:
        await trio.lowlevel.checkpoint()
        old = self._rows.get(silo_id)
        if old is None:
            return None
        if not _status_change_needed(old, status, if_version):
            return old
        return self._store(attrs.evolve(old, status=status))

    async def leave(self, silo_id: str) -> None:
        await trio.lowlevel.checkpoint()
        if self._rows.pop(silo_id, None) is not None:
            self._version += 1
            self._notify()

    async def snapshot(self) -> MembershipView:
        await trio.lowlevel.checkpoint()
        return MembershipView(self._rows, self._version)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[MembershipView]]:
        yield _MemoryWatch(self)


@attrs.define(eq=False)
class _MemoryWatch:
    table: MemoryMembershipTable
    last: int = -1

    def __aiter__(self) -> _MemoryWatch:
        return self

    async def __anext__(self) -> MembershipView:
        while self.table._version <= self.last:
            await self.table._changed.wait()
        await trio.lowlevel.checkpoint()
        self.last = self.table._version
        return MembershipView(self.table._rows, self.table._version)


def _check_alive(silo_id: str, entry: SiloEntry | None) -> None:
    """Raise :class:`SiloDeclaredDeadError` unless *entry* is a live row (for heartbeats)."""
    if entry is None:
        raise SiloDeclaredDeadError(
            f"silo {silo_id!r} is no longer in the membership table (it left, or its row "
            "expired): it must stop serving"
        )
    if not entry.alive:
        raise SiloDeclaredDeadError(
            f"silo {silo_id!r} was declared dead by the cluster: it must stop serving"
        )


def _status_change_needed(old: SiloEntry, status: SiloStatus, if_version: int | None) -> bool:
    """The shared rules of ``set_status`` (for table providers): False = return *old*."""
    if not old.alive:
        if status is SiloStatus.DEAD:
            return False
        _check_alive(old.silo_id, old)
    if if_version is not None and old.version != if_version:
        return False
    return old.status is not status


# --- the service ----------------------------------------------------------------------------


@attrs.define(eq=False)
class MembershipService:
    """One silo's membership, inside a nursery::

        async with MembershipService(table, entry, heartbeat_interval=1, dead_after=5) as m:
            await m.wait_view(lambda v: len(v.active()) >= 3)

    Entering joins (``JOINING``), starts watching and heartbeating, then sets ``ACTIVE``
    (unless ``activate=False``: then call :meth:`set_status` when ready). Every
    ``heartbeat_interval`` seconds it heartbeats and declares dead the silos whose rows did
    not change for ``dead_after`` seconds. When this silo is declared dead (or could not
    heartbeat for ``dead_after``), :attr:`declared_dead` is set and
    :class:`SiloDeclaredDeadError` is raised out of the ``async with`` (in an exception
    group). Leaving the block normally (or by an exception other than cancellation) sets
    ``SHUTTING_DOWN`` and leaves the table; a *cancelled* service does not leave (like a
    crash): the others declare it dead.
    """

    table: MembershipTable
    entry: SiloEntry
    heartbeat_interval: float = 1.0
    dead_after: float = 5.0
    activate: bool = True
    declared_dead: trio.Event = attrs.field(factory=trio.Event, init=False)
    _view: MembershipView = attrs.field(factory=MembershipView, init=False)
    _view_changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _watching: trio.Event = attrs.field(factory=trio.Event, init=False)
    _seen: dict[str, tuple[int, float]] = attrs.field(factory=dict, init=False)
    _last_heartbeat: float = attrs.field(default=-math.inf, init=False)
    _nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = attrs.field(
        default=None, init=False
    )
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _leaving: bool = attrs.field(default=False, init=False)
    _watch_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    #: why this silo stops (set with :attr:`declared_dead`)
    declared_dead_reason: str | None = attrs.field(default=None, init=False)
    #: stale silos this service found DEAD after its compare-and-set (by it or a peer)
    silos_declared_dead: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.dead_after <= self.heartbeat_interval:
            raise ValueError(
                "need 0 < heartbeat_interval < dead_after (dead_after is usually a few "
                f"intervals), got {self.heartbeat_interval=} {self.dead_after=}"
            )

    @property
    def silo_id(self) -> str:
        return self.entry.silo_id

    @property
    def view(self) -> MembershipView:
        """The latest view this silo has seen."""
        return self._view

    async def wait_view(self, predicate: Callable[[MembershipView], bool]) -> MembershipView:
        """Wait until the current view satisfies *predicate*; return that view."""
        while not predicate(self._view):
            await self._view_changed.wait()
        await trio.lowlevel.checkpoint()
        return self._view

    async def set_status(self, status: SiloStatus) -> None:
        """Set this silo's own status (e.g. ``ACTIVE`` after ``activate=False``)."""
        stored = await self.table.set_status(self.silo_id, status)
        _check_alive(self.silo_id, stored)
        assert stored is not None
        self.entry = stored

    # --- lifecycle ---

    async def __aenter__(self) -> MembershipService:
        self.entry = await self.table.join(attrs.evolve(self.entry, status=SiloStatus.JOINING))
        self._last_heartbeat = trio.current_time()
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        self._nursery_manager, self._nursery = manager, nursery
        try:
            nursery.start_soon(self._watch_loop)
            await self._watching.wait()
            if self.activate:
                await self.set_status(SiloStatus.ACTIVE)
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._detector_loop)
        except BaseException as exc:
            nursery.cancel_scope.cancel()
            try:
                await manager.__aexit__(type(exc), exc, exc.__traceback__)
            finally:
                if not self.declared_dead.is_set():  # do not stay a member that never served
                    self._leaving = True
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + self.dead_after
                        await self._leave()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery_manager is not None
        assert self._nursery is not None
        cancelled = isinstance(exc, trio.Cancelled) or (
            isinstance(exc, BaseExceptionGroup)
            and exc.split(trio.Cancelled)[1] is None  # nothing but cancellations
        )
        self._leaving = True
        self._nursery.cancel_scope.cancel()
        try:
            return await self._nursery_manager.__aexit__(exc_type, exc, tb)
        finally:
            if not cancelled and not self.declared_dead.is_set():
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.dead_after
                    await self._leave()

    async def _leave(self) -> None:
        try:
            await self.table.set_status(self.silo_id, SiloStatus.SHUTTING_DOWN)
        except MembershipError as exc:
            log.warning("silo %s could not set SHUTTING_DOWN: %s", self.silo_id, exc)
        try:
            await self.table.leave(self.silo_id)
        except MembershipError as exc:
            log.warning("silo %s could not leave the membership table: %s", self.silo_id, exc)

    def _dead(self, reason: str) -> SiloDeclaredDeadError:
        self.declared_dead_reason = reason
        self.declared_dead.set()
        log.error("silo %s stops: %s", self.silo_id, reason)
        return SiloDeclaredDeadError(f"silo {self.silo_id!r} {reason}: it must stop serving")

    # --- background tasks ---

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            with trio.move_on_at(self._last_heartbeat + self.dead_after):
                while True:
                    try:
                        self.entry = await self.table.heartbeat(self.silo_id)
                    except SiloDeclaredDeadError as exc:
                        raise self._dead("was declared dead by the cluster") from exc
                    except MembershipUnavailableError as exc:
                        log.warning("silo %s: heartbeat failed: %s", self.silo_id, exc)
                        await trio.sleep(self.heartbeat_interval / 2)
                    else:
                        self._last_heartbeat = trio.current_time()
                        break
            if trio.current_time() - self._last_heartbeat >= self.dead_after:
                raise self._dead(
                    f"could not heartbeat for {self.dead_after} s (cut off from the "
                    "membership table) and presumes it was declared dead"
                )

    async def _detector_loop(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            try:
                await self._declare_stale_silos_dead()
            except MembershipUnavailableError as exc:
                log.warning("silo %s: could not declare silos dead: %s", self.silo_id, exc)

    async def _watch_loop(self) -> None:
        while True:
            with trio.CancelScope() as self._watch_scope:
                try:
                    async with self.table.watch() as views:
                        async for view in views:
                            self._on_view(view)
                            self._watching.set()
                except MembershipUnavailableError as exc:
                    log.warning("silo %s: membership watch lost: %s", self.silo_id, exc)
                await trio.sleep(self.heartbeat_interval)

    def _on_view(self, view: MembershipView) -> None:
        if view.version < self._view.version:
            return  # older than what we have (a restarted watch)
        now = trio.current_time()
        for silo_id, entry in view.entries.items():
            seen = self._seen.get(silo_id)
            if seen is None or seen[0] != entry.version:
                self._seen[silo_id] = (entry.version, now)
        for silo_id in list(self._seen):
            if silo_id not in view.entries:
                del self._seen[silo_id]
        self._view = view
        self._view_changed.set()
        self._view_changed = trio.Event()
        mine = view.get(self.silo_id)
        if (
            not self._leaving
            and not self.declared_dead.is_set()
            and (mine is None or not mine.alive)
        ):
            assert self._nursery is not None
            reason = "was declared dead by the cluster" if mine else "was removed from the table"
            error = self._dead(reason)

            async def fail() -> None:
                raise error

            self._nursery.start_soon(fail)

    async def _declare_stale_silos_dead(self) -> None:
        now = trio.current_time()
        for silo_id, entry in list(self._view.entries.items()):
            if silo_id == self.silo_id or not entry.alive:
                continue
            version, since = self._seen.get(silo_id, (entry.version, now))
            if now - since < self.dead_after:
                continue
            stored = await self.table.set_status(silo_id, SiloStatus.DEAD, if_version=version)
            if stored is not None and stored.status is SiloStatus.DEAD:
                self.silos_declared_dead += 1
                log.warning(
                    "silo %s declared silo %s dead (its row did not change for %.1f s)",
                    self.silo_id,
                    silo_id,
                    now - since,
                )
            else:
                # The row changed (or went) but our view did not show it: the watch is
                # behind (e.g. lost after a reconnect). Restart it rather than trust it.
                self._seen[silo_id] = (version, trio.current_time())
                log.warning("silo %s: membership watch is behind; restarting it", self.silo_id)
                self._watch_scope.cancel()
