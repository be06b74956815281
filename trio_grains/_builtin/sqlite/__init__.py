"""The built-in ``sqlite`` providers: durable grain storage and a reminder table in one file.

Each provider owns one ``sqlite3`` connection and one dedicated thread, started and
joined inside the provider's ``async with``. Short calls run on the Trio thread while the
connection's thread is idle, when that cannot wait on a disk flush or a lock: WAL mode with
``synchronous=NORMAL`` (commits write to the OS only), a busy timeout of 0, and checkpoints
(which flush) left to the thread. Calls that arrive together share one transaction. A call
that meets another connection's lock, a large write, a scan, every call with
``synchronous=FULL``, and every call while the thread is busy go to the thread, which runs
everything queued since its last transaction as one transaction (group commit) and hands
the results back through the Trio token. A call is a cancel point before it starts, never
after: like ``trio.to_thread.run_sync`` with ``abandon_on_cancel=False``, the caller waits
for the outcome (milliseconds; up to ``busy_timeout`` while another process holds the write
lock), so a cancelled write has either happened, and returned its ETag, or not started.
``sqlite3.Error`` becomes :class:`~trio_grains.StorageError` naming the file, and the
thread keeps serving: after an error other than a busy lock it reopens the connection
before the next transaction (the file may have been read-only, or replaced).

See docs/storage-sqlite.md for options, durability and limits.

May import: layers 0-7 (the contracts it implements), ``hookspecs`` and its own modules.
Not the plugin manager, the silo or the client: a built-in is an ordinary plugin.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..._registry import ProviderContext, ProviderRegistry
from ...hookspecs import hookimpl
from ._connection import SqliteConnection, SqliteStatistics
from ._options import REMINDER_TABLE, STATE_TABLE, parse_options
from ._reminders import SqliteReminderTable
from ._storage import SqliteStorage

__all__ = [
    "SqliteReminderTable",
    "SqliteStatistics",
    "SqliteStorage",
    "open_sqlite_reminder_table",
    "open_sqlite_storage",
]

# --- factories and hooks ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _opened(
    where: str, options: Mapping[str, Any], component: str, schema: str
) -> AsyncIterator[SqliteConnection]:
    conn = SqliteConnection(parse_options(where, options), (schema,), component)
    await conn.start()
    try:
        yield conn
    finally:
        await conn.stop()


@contextlib.asynccontextmanager
async def open_sqlite_storage(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[SqliteStorage]:
    """The ``sqlite`` storage provider (options: ``path``, ``synchronous``, ``busy_timeout``)."""
    where = f"sqlite storage provider [storage.{context.name}]"
    async with _opened(where, options, "grain_state", STATE_TABLE) as conn:
        yield SqliteStorage(conn)


@contextlib.asynccontextmanager
async def open_sqlite_reminder_table(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[SqliteReminderTable]:
    """The ``sqlite`` reminder table (the same options as the storage provider)."""
    where = "sqlite reminder table [reminders]"
    async with _opened(where, options, "reminders", REMINDER_TABLE) as conn:
        yield SqliteReminderTable(conn)


@hookimpl
def grains_register_storage(registry: ProviderRegistry[Any]) -> None:
    registry.register("sqlite", open_sqlite_storage)


@hookimpl
def grains_register_reminder_tables(registry: ProviderRegistry[Any]) -> None:
    registry.register("sqlite", open_sqlite_reminder_table)
