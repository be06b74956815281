"""The per-silo membership service: join, heartbeat, failure detection and self-fencing.

:class:`MembershipService` keeps one silo's row in a
:class:`~trio_grains._cluster.membership.MembershipTable` through the table's
:class:`~trio_grains._cluster.membership.MembershipProtocol` (the values, the table contract,
the protocol and the in-memory table live in :mod:`trio_grains._cluster.membership`, which
describes them). The service adds time: when to heartbeat, when a silent silo is declared
dead, when this silo presumes itself dead.

May import: the core up to the catalog and the dispatcher, and the cluster modules below it
(``envelope``, ``membership``, ``directory``, ``transport``, ``messenger``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import attrs
import trio

from .._exceptions import (
    MembershipError,
    MembershipUnavailableError,
    SiloDeclaredDeadError,
)
from .membership import MembershipProtocol, MembershipTable, check_alive
from .silo_entries import MembershipView, SiloEntry, SiloStatus

__all__ = ["MembershipService"]

log = logging.getLogger("trio_grains.membership")


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
    #: reports this silo's activation count with each heartbeat (``SiloEntry.load``)
    load: Callable[[], int] | None = None
    #: leave the table even when cancelled (a silo stopped by its host's cancel scope);
    #: ``False``: a cancelled service behaves like a crash and is declared dead later
    leave_when_cancelled: bool = False
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
    #: cancelled when this silo is declared dead: work that needs the cluster (a graceful
    #: stop's goodbyes) must not wait for a table it can no longer reach
    cancel_on_death: list[trio.CancelScope] = attrs.field(factory=list, init=False)
    #: leave the table on exit (``False``: an abandoned stop says no goodbye)
    say_goodbye: bool = attrs.field(default=True, init=False)

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.dead_after <= self.heartbeat_interval:
            raise ValueError(
                "need 0 < heartbeat_interval < dead_after (dead_after is usually a few "
                f"intervals), got {self.heartbeat_interval=} {self.dead_after=}"
            )
        ttl = self.table.row_ttl
        if ttl is not None and ttl <= self.heartbeat_interval:
            raise ValueError(
                f"the membership table's rows expire after {ttl} s, sooner than the next "
                f"heartbeat ({self.heartbeat_interval=}): make the table's row TTL a few "
                "times dead_after"
            )

    @property
    def protocol(self) -> MembershipProtocol:
        """The membership protocol over :attr:`table` (shared by every user of the table)."""
        return self.table.protocol

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
        stored = await self.protocol.set_status(self.silo_id, status)
        check_alive(self.silo_id, stored)
        assert stored is not None
        self.entry = stored

    # --- lifecycle ---

    async def __aenter__(self) -> MembershipService:
        self.entry = await self.protocol.join(attrs.evolve(self.entry, status=SiloStatus.JOINING))
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
            leave = self.say_goodbye and (self.leave_when_cancelled or not cancelled)
            if leave and not self.declared_dead.is_set():
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.dead_after
                    await self._leave()

    async def _leave(self) -> None:
        try:
            await self.protocol.set_status(self.silo_id, SiloStatus.SHUTTING_DOWN)
        except MembershipError as exc:
            log.warning("silo %s could not set SHUTTING_DOWN: %s", self.silo_id, exc)
        try:
            await self.protocol.leave(self.silo_id)
        except MembershipError as exc:
            log.warning("silo %s could not leave the membership table: %s", self.silo_id, exc)

    def _dead(self, reason: str) -> SiloDeclaredDeadError:
        self.declared_dead_reason = reason
        self.declared_dead.set()
        for scope in self.cancel_on_death:
            scope.cancel()
        log.error("silo %s stops: %s", self.silo_id, reason)
        return SiloDeclaredDeadError(f"silo {self.silo_id!r} {reason}: it must stop serving")

    # --- background tasks ---

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            with trio.move_on_at(self._last_heartbeat + self.dead_after):
                while True:
                    try:
                        load = None if self.load is None else self.load()
                        self.entry = await self.protocol.heartbeat(self.silo_id, load=load)
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
                    async with self.protocol.watch() as views:
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
            stored = await self.protocol.set_status(silo_id, SiloStatus.DEAD, if_version=version)
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
