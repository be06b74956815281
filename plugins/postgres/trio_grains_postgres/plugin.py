"""The ``postgres`` plugin: registers the storage provider and the reminder table.

Loaded through the ``trio_grains`` entry point ``postgres`` of trio-grains-postgres; the
hooks only register factories (no I/O). A factory validates its options when it is called
(a :class:`~trio_grains.ConfigError` names every bad key) and returns an async context
manager that, when the silo enters it, prepares the schema and opens a pool of
``pool_size`` connections; leaving it closes the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from trio_grains import ProviderContext, ProviderRegistry, hookimpl

from ._database import open_database
from ._options import PostgresOptions
from ._reminders import PostgresReminderTable
from ._storage import PostgresStorage

__all__ = ["open_postgres_reminder_table", "open_postgres_storage"]


def open_postgres_storage(
    context: ProviderContext, options: Mapping[str, Any]
) -> AbstractAsyncContextManager[PostgresStorage]:
    """The ``postgres`` storage provider factory (options: :class:`PostgresOptions`)."""
    opts = PostgresOptions.from_mapping(options, f"postgres storage provider {context.name!r}")
    return _storage(opts, f"trio-grains-storage-{context.name}")


def open_postgres_reminder_table(
    context: ProviderContext, options: Mapping[str, Any]
) -> AbstractAsyncContextManager[PostgresReminderTable]:
    """The ``postgres`` reminder table factory (options: :class:`PostgresOptions`)."""
    opts = PostgresOptions.from_mapping(options, "postgres reminder table")
    return _reminder_table(opts, "trio-grains-reminders")


@contextlib.asynccontextmanager
async def _storage(options: PostgresOptions, name: str) -> AsyncIterator[PostgresStorage]:
    async with open_database(options, name) as db:
        yield PostgresStorage(db)


@contextlib.asynccontextmanager
async def _reminder_table(
    options: PostgresOptions, name: str
) -> AsyncIterator[PostgresReminderTable]:
    async with open_database(options, name) as db:
        yield PostgresReminderTable(db)


@hookimpl
def grains_register_storage(registry: ProviderRegistry[Any]) -> None:
    registry.register("postgres", open_postgres_storage)


@hookimpl
def grains_register_reminder_tables(registry: ProviderRegistry[Any]) -> None:
    registry.register("postgres", open_postgres_reminder_table)
