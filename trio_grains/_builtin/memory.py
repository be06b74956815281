"""The built-in ``memory`` providers: grain storage, a reminder table, in-process clustering.

Storage and reminders live in a dict. Not durable: everything is gone when the silo stops.
The default storage and reminder table, and the reference implementation of their
contracts (it passes ``trio_grains.testing``'s kits).

May import: layers 0-7 (the contracts it implements) and ``hookspecs``. Not the plugin
manager, the silo or the client: a built-in is an ordinary plugin.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import trio

from .._cluster.transport import MemoryCluster
from .._exceptions import ConfigError
from .._ids import GrainId
from .._registry import ProviderContext, ProviderRegistry
from .._reminders import ReminderEntry, ReminderTable
from .._storage import GrainStorage, InconsistentStateError, StoredState
from ..hookspecs import hookimpl

__all__ = ["MemoryReminderTable", "MemoryStorage", "open_memory_cluster"]

_etags = itertools.count(1)


def _no_options(kind: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ConfigError(f"the memory {kind} takes no options; got {', '.join(options)}")


def _mismatch(what: str, expected: str | None, actual: str | None) -> InconsistentStateError:
    return InconsistentStateError(
        f"{what}: the write expected ETag {expected!r} but the stored one is {actual!r}"
    )


@attrs.define(eq=False)
class MemoryStorage(GrainStorage):
    """Records in a dict, keyed by (state name, grain id)."""

    _records: dict[tuple[str, GrainId], StoredState] = attrs.field(factory=dict, init=False)

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        await trio.lowlevel.checkpoint()
        return self._records.get((state_name, grain_id))

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        await trio.lowlevel.checkpoint()
        key = (state_name, grain_id)
        current = self._records.get(key)
        if (current.etag if current else None) != etag:
            raise _mismatch(f"{state_name} of {grain_id}", etag, current.etag if current else None)
        new_etag = str(next(_etags))
        self._records[key] = StoredState(bytes(data), new_etag)
        return new_etag

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        await trio.lowlevel.checkpoint()
        key = (state_name, grain_id)
        current = self._records.get(key)
        if (current.etag if current else None) != etag:
            raise _mismatch(f"{state_name} of {grain_id}", etag, current.etag if current else None)
        self._records.pop(key, None)


@attrs.define(eq=False)
class MemoryReminderTable(ReminderTable):
    """Reminder rows in a dict, keyed by (grain id, name)."""

    _rows: dict[tuple[GrainId, str], ReminderEntry] = attrs.field(factory=dict, init=False)

    async def read_all(self) -> list[ReminderEntry]:
        await trio.lowlevel.checkpoint()
        return list(self._rows.values())

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        await trio.lowlevel.checkpoint()
        return [row for (gid, _), row in self._rows.items() if gid == grain_id]

    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        await trio.lowlevel.checkpoint()
        return self._rows.get((grain_id, name))

    async def upsert(self, entry: ReminderEntry) -> str:
        await trio.lowlevel.checkpoint()
        etag = str(next(_etags))
        self._rows[(entry.grain_id, entry.name)] = attrs.evolve(entry, etag=etag)
        return etag

    async def remove(self, grain_id: GrainId, name: str, etag: str | None) -> bool:
        await trio.lowlevel.checkpoint()
        row = self._rows.get((grain_id, name))
        if row is None or (etag is not None and row.etag != etag):
            return False
        del self._rows[(grain_id, name)]
        return True


@contextlib.asynccontextmanager
async def open_memory_storage(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[MemoryStorage]:
    _no_options("storage provider", options)
    yield MemoryStorage()


@contextlib.asynccontextmanager
async def open_memory_reminder_table(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[MemoryReminderTable]:
    _no_options("reminder table", options)
    yield MemoryReminderTable()


@hookimpl
def grains_register_storage(registry: ProviderRegistry[Any]) -> None:
    registry.register("memory", open_memory_storage)


@hookimpl
def grains_register_reminder_tables(registry: ProviderRegistry[Any]) -> None:
    registry.register("memory", open_memory_reminder_table)


@contextlib.asynccontextmanager
async def open_memory_cluster(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[MemoryCluster]:
    """The ``memory`` clustering provider: the :class:`MemoryCluster` given as ``cluster``."""
    unknown = sorted(set(options) - {"cluster"})
    if unknown:
        raise ConfigError(f"[clustering] options: unknown key(s) {', '.join(unknown)}")
    cluster = options.get("cluster")
    if not isinstance(cluster, MemoryCluster):
        raise ConfigError(
            "the memory clustering provider joins the silos of one process: pass the same "
            "options={'cluster': MemoryCluster()} to each of them (or use "
            "trio_grains.testing.open_test_cluster); for separate processes use the nats "
            "provider"
        )
    await trio.lowlevel.checkpoint()
    yield cluster


@hookimpl
def grains_register_clustering(registry: ProviderRegistry[Any]) -> None:
    registry.register("memory", open_memory_cluster)
