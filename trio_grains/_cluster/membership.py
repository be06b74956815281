"""Cluster membership: the membership-table contract, its values, and the in-memory table.

Every silo of a cluster has one row (a :class:`SiloEntry`) in a shared membership table.
A silo *joins* (status ``JOINING``), becomes ``ACTIVE`` when it serves, heartbeats its row
periodically, and on a graceful exit goes ``SHUTTING_DOWN`` and *leaves* (its row is
removed). A silo whose heartbeats stop is declared ``DEAD`` by any live silo that notices
(idempotent: ``DEAD`` is final, and the declaration is a compare-and-set on the version
that was observed to be stale, so a silo that heartbeats meanwhile is not declared dead).

Failure detection uses *local observation*: silo A declares silo B dead when A has seen no
change of B's row for ``dead_after`` seconds of A's own (Trio) clock, so wall clocks of
different machines never need to agree, and a ``MockClock`` drives it in tests.

A silo that is declared dead must stop serving:
:class:`~trio_grains._cluster.membership_service.MembershipService` raises
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
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from .._exceptions import (
    MembershipError,
    MembershipUnavailableError,
    SiloAlreadyJoinedError,
    SiloDeclaredDeadError,
)

__all__ = [
    "MembershipError",
    "MembershipTable",
    "MembershipUnavailableError",
    "MembershipView",
    "MemoryMembershipTable",
    "SiloAlreadyJoinedError",
    "SiloDeclaredDeadError",
    "SiloEntry",
    "SiloStatus",
]


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

    ``address``: where other silos reach it (its transport address); ``grain_types``: the
    grain type names it hosts (placement only picks silos that host the type);
    ``started_at`` and ``heartbeat_at``: wall-clock seconds (informational; failure
    detection does not compare clocks); ``load``: its activation count at the last
    heartbeat (for activation-count placement); ``version``: set by the table, strictly
    larger after every write of the row, and comparable with
    :attr:`MembershipView.version`.
    """

    silo_id: str
    address: str
    status: SiloStatus = SiloStatus.JOINING
    roles: frozenset[str] = attrs.field(default=frozenset(), converter=_to_roles)
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    version: int = 0
    grain_types: frozenset[str] = attrs.field(default=frozenset(), converter=_to_roles)
    load: int = 0

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

    A shared backend can hold rows this table did not write: decode them with bounds
    (:mod:`trio_grains._rows`) and treat a row that does not decode as absent, counted
    (``malformed_rows``) and logged once, never as an error of :meth:`watch`,
    :meth:`snapshot` or :meth:`join` (a silo joining over one under its own id replaces
    it). One bad row must not stop a silo.
    """

    @abc.abstractmethod
    async def join(self, entry: SiloEntry) -> SiloEntry:
        """Add the silo's row (``heartbeat_at`` and ``version`` are set by the table) and
        return it as stored.

        Raises :class:`SiloAlreadyJoinedError` if a row with this silo id exists and is not
        ``DEAD`` (a ``DEAD`` row is replaced).
        """

    @abc.abstractmethod
    async def heartbeat(self, silo_id: str, *, load: int | None = None) -> SiloEntry:
        """Refresh the row's ``heartbeat_at`` (a new version), and its ``load`` unless
        *load* is ``None``; return the stored row.

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

    async def heartbeat(self, silo_id: str, *, load: int | None = None) -> SiloEntry:
        await trio.lowlevel.checkpoint()
        old = self._rows.get(silo_id)
        _check_alive(silo_id, old)
        assert old is not None
        load = old.load if load is None else load
        return self._store(attrs.evolve(old, heartbeat_at=self.clock(), load=load))

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
