"""trio-grains' provider conformance kits, run against PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

try:
    from trio_grains.testing import check_grain_storage, check_reminder_table
except ImportError:  # pragma: no cover - the kit lands separately
    KIT = False
else:
    KIT = True

needs_kit = pytest.mark.skipif(not KIT, reason="conformance kit not written yet")


@needs_kit
async def test_storage_conformance(open_storage: Any) -> None:
    await check_grain_storage(open_storage)


@needs_kit
async def test_reminder_table_conformance(open_table: Any) -> None:
    await check_reminder_table(open_table)
