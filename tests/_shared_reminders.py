"""A reminder table shared by every silo of a test (one process): plugin ``shared``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from trio_grains import ProviderContext, ProviderRegistry, hookimpl
from trio_grains._builtin.memory import MemoryReminderTable


class SharedTablePlugin:
    """Registers reminder table ``shared``: every silo gets the same in-memory table."""

    __name__ = "shared-reminder-table"

    def __init__(self) -> None:
        self.table = MemoryReminderTable()

    @contextlib.asynccontextmanager
    async def open(self, ctx: ProviderContext, options: Mapping[str, Any]) -> AsyncIterator[Any]:
        yield self.table

    @hookimpl
    def grains_register_reminder_tables(self, registry: ProviderRegistry[Any]) -> None:
        registry.register("shared", self.open)
