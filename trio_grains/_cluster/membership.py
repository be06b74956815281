"""Cluster membership: the table contract, the protocol over it, and the in-memory table.

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

**Who does what.** As in Orleans (``IMembershipTable``: ``ReadRow``, ``ReadAll``,
``InsertRow``, ``UpdateRow`` with an etag), a table provider is compare-and-set storage of
opaque rows and nothing more: :class:`MembershipTable` (read a row, insert if absent,
replace or delete if the version still matches, read and watch them all). The protocol
above (join, heartbeat, status changes, leaving; the ``DEAD``-is-final rules; encoding a
:class:`SiloEntry` as a row and decoding rows as untrusted input, skipping and counting
malformed ones) is :class:`MembershipProtocol`, here in the core, the same for every
table. Why: every rule written once is a rule no provider can get subtly wrong, and the
conformance kit (:func:`trio_grains.testing.check_membership_table`) can check a provider
completely, since what it must do is small.

Tables: :class:`MemoryMembershipTable` here (one process), a JetStream KV bucket in
``trio_grains_nats.membership``.

The values it stores (:class:`SiloEntry`, :class:`MembershipView`) and their row encoding
are in ``silo_entries``.

May import: the core up to the catalog and the dispatcher, and ``silo_entries``. Not the
other cluster modules: the contracts are the bottom of the cluster.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import final

import attrs
import trio

from .._exceptions import (
    MembershipError,
    MembershipUnavailableError,
    SiloAlreadyJoinedError,
    SiloDeclaredDeadError,
)
from .._rows import MalformedRows
from .silo_entries import (
    MembershipRow,
    MembershipRows,
    MembershipView,
    SiloEntry,
    SiloStatus,
    decode_silo_row,
    encode_silo_row,
)

__all__ = [
    "MembershipError",
    "MembershipProtocol",
    "MembershipTable",
    "MembershipUnavailableError",
    "MemoryMembershipTable",
    "SiloAlreadyJoinedError",
    "SiloDeclaredDeadError",
]

log = logging.getLogger("trio_grains.membership")

_MAX_ATTEMPTS = 100  # compare-and-set rounds before giving up (each lost one means progress)


# --- the contract ---------------------------------------------------------------------------


class MembershipTable(abc.ABC):
    """The contract of a membership table provider: compare-and-set storage of rows.

    A row is opaque bytes under a string key, with a version. Implement the five abstract
    methods (and :meth:`key_of` if the backend restricts its keys); the core's
    :class:`MembershipProtocol` does everything else. The rules:

    * **Versions** are positive integers, and every write (insert, update, delete) gets
      one larger than every version this table's backend gave before, for any key (a
      global sequence: a JetStream stream sequence, a database sequence, a counter).
      Views are ordered by them.
    * **Compare-and-set**: :meth:`insert_row` stores only if the key has no row;
      :meth:`update_row` and :meth:`delete_row` only if the row's version is the one
      given. A refused write changes nothing and says so by its result (``None`` or
      ``False``), never by an exception; of concurrent writes expecting the same state,
      from any number of processes, exactly one succeeds.
    * **Bytes are kept exactly**, whatever they hold: rows that other writers put in a
      shared backend reach the core unchanged, which decodes them as untrusted input and
      skips (counts, logs once) those that do not decode. Do not parse them.
    * **Isolation**: a table sees the rows of its own cluster only.
    * **Errors**: translate transient backend errors into
      :class:`MembershipUnavailableError` (the service retries on it); take no timeout
      parameters (callers use cancel scopes). One table object may serve several silos.

    Optional capability: a backend that expires rows not written for a while (a per-row
    TTL, so that a crashed silo's row vanishes even if nobody declares it dead) says so in
    :attr:`row_ttl`; an expired row is simply absent, and the service refuses a heartbeat
    interval that could not keep its row alive.

    The methods :meth:`join` ... :meth:`watch` are the protocol's, offered on the table
    for its users (``table.join(entry)`` is ``table.protocol.join(entry)``): providers do
    not override them.
    """

    _protocol: MembershipProtocol | None = None

    @property
    def row_ttl(self) -> float | None:
        """Seconds after which a row that is not written again vanishes; ``None`` (the
        default): rows never expire."""
        return None

    def key_of(self, silo_id: str) -> str:
        """The key of *silo_id*'s row: the same string every time, a different one for
        every silo id (any non-empty ``str``). Override it to escape characters the
        backend does not allow in keys; the default is the silo id itself."""
        return silo_id

    def describe(self) -> str:
        """Names this table in log records (``"membership bucket 'grains-membership-c1'"``)."""
        return f"membership table {type(self).__name__}"

    @abc.abstractmethod
    async def read_row(self, key: str) -> MembershipRow | None:
        """The row stored under *key*, ``None`` if it has none (never written, deleted, or
        expired)."""

    @abc.abstractmethod
    async def insert_row(self, key: str, data: bytes) -> int | None:
        """Store *data* under *key* if the key has no row; its version, or ``None`` if the
        key has a row (then nothing changed)."""

    @abc.abstractmethod
    async def update_row(self, key: str, data: bytes, version: int) -> int | None:
        """Replace the row under *key* with *data* if its version is *version*; the new
        version, or ``None`` if the row has another version or is absent (nothing
        changed)."""

    @abc.abstractmethod
    async def delete_row(self, key: str, version: int) -> bool:
        """Delete the row under *key* if its version is *version*; False if the row has
        another version or is absent (nothing changed)."""

    @abc.abstractmethod
    def watch_rows(self) -> AbstractAsyncContextManager[AsyncIterator[MembershipRows]]:
        """``async with table.watch_rows() as snapshots: async for rows in snapshots: ...``

        The first :class:`MembershipRows` are the current rows; then new ones after each
        change (a consumer that falls behind may get only the latest of several changes;
        ``version`` increases strictly). Iteration ends only when the block is left, or
        raises :class:`MembershipUnavailableError` if the backend is lost.
        """

    async def read_rows(self) -> MembershipRows:
        """The current rows. By default the first rows of a :meth:`watch_rows`; override
        it when the backend reads them more cheaply."""
        async with self.watch_rows() as snapshots:
            async for rows in snapshots:
                return rows
        raise MembershipUnavailableError(f"the watch of {self.describe()} ended at once")

    # --- the protocol's face (not for providers to override) ------------------------------

    @final
    @property
    def protocol(self) -> MembershipProtocol:
        """The membership protocol over this table (one per table object)."""
        if self._protocol is None:
            self._protocol = MembershipProtocol(self)
        return self._protocol

    @final
    @property
    def malformed_rows(self) -> int:
        """How many malformed rows were skipped (each key at each version once)."""
        return self.protocol.malformed_rows

    @final
    async def join(self, entry: SiloEntry) -> SiloEntry:
        """:meth:`MembershipProtocol.join`."""
        return await self.protocol.join(entry)

    @final
    async def heartbeat(self, silo_id: str, *, load: int | None = None) -> SiloEntry:
        """:meth:`MembershipProtocol.heartbeat`."""
        return await self.protocol.heartbeat(silo_id, load=load)

    @final
    async def set_status(
        self, silo_id: str, status: SiloStatus, *, if_version: int | None = None
    ) -> SiloEntry | None:
        """:meth:`MembershipProtocol.set_status`."""
        return await self.protocol.set_status(silo_id, status, if_version=if_version)

    @final
    async def leave(self, silo_id: str) -> None:
        """:meth:`MembershipProtocol.leave`."""
        await self.protocol.leave(silo_id)

    @final
    async def snapshot(self) -> MembershipView:
        """:meth:`MembershipProtocol.snapshot`."""
        return await self.protocol.snapshot()

    @final
    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[MembershipView]]:
        """:meth:`MembershipProtocol.watch`."""
        return self.protocol.watch()


# --- the protocol ---------------------------------------------------------------------------


@attrs.define(eq=False)
class MembershipProtocol:
    """Join, heartbeat, status changes and leaving, over any :class:`MembershipTable`.

    Every write is a compare-and-set on the version just read, retried when another
    writer came first; so a heartbeat never overwrites a concurrent ``DEAD``, and two
    silos declaring a third dead store one ``DEAD``. Rows are decoded by
    :func:`decode_silo_row`: a row that does not decode is absent for every method here,
    counted in :attr:`malformed_rows` and logged once (a joining silo replaces one under
    its own key). *clock*: wall-clock seconds for ``heartbeat_at`` (informational).
    """

    table: MembershipTable
    clock: Callable[[], float] = time.time
    _malformed: MalformedRows = attrs.field(init=False)
    #: key -> (version, decoded entry or None): rows are decoded once per version
    _decoded: dict[str, tuple[int, SiloEntry | None]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._malformed = MalformedRows(self.table.describe(), log)

    @property
    def malformed_rows(self) -> int:
        return self._malformed.count

    # --- rows ---

    def decode(self, row: MembershipRow) -> SiloEntry | None:
        """The entry of *row*; ``None`` if it is malformed (counted and logged once)."""
        cached = self._decoded.get(row.key)
        if cached is not None and cached[0] == row.version:
            return cached[1]
        try:
            entry: SiloEntry | None = decode_silo_row(
                row.key, row.data, row.version, self.table.key_of
            )
        except MembershipError as exc:
            self._malformed.report(row.key, row.version, exc)
            entry = None
        self._decoded[row.key] = (row.version, entry)
        return entry

    def view(self, rows: MembershipRows) -> MembershipView:
        """The view of *rows*: the rows that decode, by silo id."""
        entries = {}
        for row in rows.rows.values():
            entry = self.decode(row)
            if entry is not None:  # decoding checked that the key is this silo's
                entries[entry.silo_id] = entry
        if len(self._decoded) > 2 * len(rows.rows) + 64:  # forget rows long gone
            self._decoded = {k: v for k, v in self._decoded.items() if k in rows.rows}
        return MembershipView(entries, rows.version)

    def _encode(self, entry: SiloEntry) -> bytes:
        return encode_silo_row(entry, self.table.key_of)

    async def _read(self, silo_id: str) -> tuple[SiloEntry | None, MembershipRow | None]:
        row = await self.table.read_row(self.table.key_of(silo_id))
        return (None, None) if row is None else (self.decode(row), row)

    def _too_busy(self, silo_id: str, what: str) -> MembershipUnavailableError:
        return MembershipUnavailableError(
            f"could not {what} silo {silo_id!r}: its row changed {_MAX_ATTEMPTS} times "
            f"meanwhile in {self.table.describe()}"
        )

    # --- the protocol ---

    async def join(self, entry: SiloEntry) -> SiloEntry:
        """Add the silo's row (``heartbeat_at`` and ``version`` are set here) and return
        it as stored.

        Raises :class:`SiloAlreadyJoinedError` if a row with this silo id exists and is not
        ``DEAD`` (a ``DEAD`` or malformed row is replaced).
        """
        entry = attrs.evolve(entry, heartbeat_at=self.clock(), version=0)
        key = self.table.key_of(entry.silo_id)
        data = self._encode(entry)
        for _ in range(_MAX_ATTEMPTS):
            version = await self.table.insert_row(key, data)
            if version is not None:
                return attrs.evolve(entry, version=version)
            old, row = await self._read(entry.silo_id)
            if row is None:
                continue  # deleted meanwhile: insert again
            if old is not None and old.alive:
                raise SiloAlreadyJoinedError(
                    f"silo {entry.silo_id!r} is already a member ({old.status.name}): "
                    "give every silo incarnation its own id"
                )
            version = await self.table.update_row(key, data, row.version)
            if version is not None:
                return attrs.evolve(entry, version=version)
        raise self._too_busy(entry.silo_id, "join")

    async def heartbeat(self, silo_id: str, *, load: int | None = None) -> SiloEntry:
        """Refresh the row's ``heartbeat_at`` (a new version), and its ``load`` unless
        *load* is ``None``; return the stored row.

        Raises :class:`SiloDeclaredDeadError` if the row is ``DEAD``, absent or malformed:
        the silo must stop serving. Never overwrites a concurrent ``DEAD``.
        """
        for _ in range(_MAX_ATTEMPTS):
            old, row = await self._read(silo_id)
            check_alive(silo_id, old)
            assert old is not None
            assert row is not None
            new = attrs.evolve(
                old, heartbeat_at=self.clock(), load=old.load if load is None else load
            )
            version = await self.table.update_row(row.key, self._encode(new), row.version)
            if version is not None:
                return attrs.evolve(new, version=version)
        raise self._too_busy(silo_id, "heartbeat")

    async def set_status(
        self, silo_id: str, status: SiloStatus, *, if_version: int | None = None
    ) -> SiloEntry | None:
        """Set the row's status; return the row as stored afterwards, ``None`` if absent.

        With *if_version*, change nothing unless the stored version is *if_version* (then
        the stored row is returned unchanged: compare its status). ``DEAD`` is final:
        setting ``DEAD`` again returns the row unchanged, setting anything else on a
        ``DEAD`` row raises :class:`SiloDeclaredDeadError`.
        """
        for _ in range(_MAX_ATTEMPTS):
            old, row = await self._read(silo_id)
            if old is None or row is None:
                return None
            if not _status_change_needed(old, status, if_version):
                return old
            new = attrs.evolve(old, status=status)
            version = await self.table.update_row(row.key, self._encode(new), row.version)
            if version is not None:
                return attrs.evolve(new, version=version)
        raise self._too_busy(silo_id, "set the status of")

    async def leave(self, silo_id: str) -> None:
        """Remove the silo's row (nothing happens if it is absent)."""
        for _ in range(_MAX_ATTEMPTS):
            row = await self.table.read_row(self.table.key_of(silo_id))
            if row is None or await self.table.delete_row(row.key, row.version):
                return
        raise self._too_busy(silo_id, "remove")

    async def snapshot(self) -> MembershipView:
        """The current rows, as a view."""
        return self.view(await self.table.read_rows())

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[MembershipView]]:
        """``async with protocol.watch() as views: async for view in views: ...``

        The first view is the current table; then a view after each change (a consumer
        that falls behind may get only the latest of several changes; versions increase
        strictly). Iteration ends only when the block is left (or raises
        :class:`MembershipUnavailableError` if the backend is lost).
        """
        async with self.table.watch_rows() as snapshots:
            yield _Views(self, snapshots)


@attrs.define(eq=False)
class _Views:
    protocol: MembershipProtocol
    snapshots: AsyncIterator[MembershipRows]

    def __aiter__(self) -> _Views:
        return self

    async def __anext__(self) -> MembershipView:
        try:
            rows = await self.snapshots.__anext__()
        except StopAsyncIteration:
            raise MembershipUnavailableError(
                f"the watch of {self.protocol.table.describe()} ended"
            ) from None
        return self.protocol.view(rows)


def check_alive(silo_id: str, entry: SiloEntry | None) -> None:
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
    """The rules of ``set_status``: False = return *old* unchanged."""
    if not old.alive:
        if status is SiloStatus.DEAD:
            return False
        check_alive(old.silo_id, old)
    if if_version is not None and old.version != if_version:
        return False
    return old.status is not status


# --- in memory ------------------------------------------------------------------------------


@attrs.define(eq=False)
class MemoryMembershipTable(MembershipTable):
    """A table in this process (tests, single-process clusters)."""

    _rows: dict[str, MembershipRow] = attrs.field(factory=dict, init=False)
    _version: int = attrs.field(default=0, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def _bump(self) -> int:
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()
        return self._version

    def _matches(self, key: str, version: int) -> bool:
        row = self._rows.get(key)
        return row is not None and row.version == version

    async def read_row(self, key: str) -> MembershipRow | None:
        await trio.lowlevel.checkpoint()
        return self._rows.get(key)

    async def insert_row(self, key: str, data: bytes) -> int | None:
        await trio.lowlevel.checkpoint()
        if key in self._rows:
            return None
        version = self._bump()
        self._rows[key] = MembershipRow(key, bytes(data), version)
        return version

    async def update_row(self, key: str, data: bytes, version: int) -> int | None:
        await trio.lowlevel.checkpoint()
        if not self._matches(key, version):
            return None
        new = self._bump()
        self._rows[key] = MembershipRow(key, bytes(data), new)
        return new

    async def delete_row(self, key: str, version: int) -> bool:
        await trio.lowlevel.checkpoint()
        if not self._matches(key, version):
            return False
        del self._rows[key]
        self._bump()
        return True

    async def read_rows(self) -> MembershipRows:
        await trio.lowlevel.checkpoint()
        return MembershipRows(self._rows, self._version)

    @asynccontextmanager
    async def watch_rows(self) -> AsyncIterator[AsyncIterator[MembershipRows]]:
        yield _MemoryWatch(self)


@attrs.define(eq=False)
class _MemoryWatch:
    table: MemoryMembershipTable
    last: int = -1

    def __aiter__(self) -> _MemoryWatch:
        return self

    async def __anext__(self) -> MembershipRows:
        while self.table._version <= self.last:
            await self.table._changed.wait()
        await trio.lowlevel.checkpoint()
        self.last = self.table._version
        return MembershipRows(self.table._rows, self.table._version)
