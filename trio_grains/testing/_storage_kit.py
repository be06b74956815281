"""The grain-storage conformance kit: every rule of :class:`~trio_grains.GrainStorage`.

Each check takes ``open_storage``, a callable returning an async context manager that
yields a provider on the same backend every time, and raises :class:`AssertionError`
naming the broken rule. Checks use a fresh grain type and state name of their own (a
random tag), so a backend holding data from earlier runs does not disturb them.

May import: every layer below, the ``trio_grains`` package, ``_kit_helpers`` and the storage
checks. Not the silo or the client: a kit checks a provider on its own.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TypeAlias

from .._storage import GrainStorage
from ._kit_helpers import run_checks
from ._storage_checks_concurrency import (
    check_cancelled_write,
    check_concurrent_writers_distinct_records,
    check_concurrent_writers_one_record,
    check_durability,
)
from ._storage_checks_records import (
    check_clear,
    check_clear_missing_record,
    check_etag_against_missing_record_conflicts,
    check_etag_changes_on_every_write,
    check_grain_id_key_kinds,
    check_large_state,
    check_missing_record_reads_none,
    check_none_etag_against_existing_record_conflicts,
    check_round_trip,
    check_stale_etag_clear_conflicts,
    check_stale_etag_write_conflicts,
    check_state_names_are_independent,
)

__all__ = [
    "STORAGE_CHECKS",
    "STORAGE_DURABILITY_CHECKS",
    "StorageCheck",
    "StorageOpener",
    "check_grain_storage",
]

StorageOpener: TypeAlias = Callable[[], AbstractAsyncContextManager[GrainStorage]]
"""``open_storage()``: a fresh provider on the same backend each time it is called."""

StorageCheck: TypeAlias = Callable[[StorageOpener], Awaitable[None]]
"""One conformance check: ``await check(open_storage)``; AssertionError when it fails."""

STORAGE_CHECKS: Mapping[str, StorageCheck] = types.MappingProxyType(
    {
        "missing_record_reads_none": check_missing_record_reads_none,
        "round_trip": check_round_trip,
        "etag_changes_on_every_write": check_etag_changes_on_every_write,
        "stale_etag_write_conflicts": check_stale_etag_write_conflicts,
        "none_etag_against_existing_record_conflicts": (
            check_none_etag_against_existing_record_conflicts
        ),
        "etag_against_missing_record_conflicts": check_etag_against_missing_record_conflicts,
        "clear": check_clear,
        "stale_etag_clear_conflicts": check_stale_etag_clear_conflicts,
        "clear_missing_record": check_clear_missing_record,
        "state_names_are_independent": check_state_names_are_independent,
        "grain_id_key_kinds": check_grain_id_key_kinds,
        "large_state": check_large_state,
        "concurrent_writers_one_record": check_concurrent_writers_one_record,
        "concurrent_writers_distinct_records": check_concurrent_writers_distinct_records,
        "cancelled_write": check_cancelled_write,
        "durability": check_durability,
    }
)
"""Every grain-storage check by name, in the order :func:`check_grain_storage` runs them."""

STORAGE_DURABILITY_CHECKS: frozenset[str] = frozenset({"durability"})
"""The checks that close and reopen the provider (skipped with ``durable=False``)."""


async def check_grain_storage(open_storage: StorageOpener, *, durable: bool = True) -> None:
    """Check that a storage provider keeps every rule of :class:`~trio_grains.GrainStorage`.

    *open_storage* is called several times and must return an async context manager
    yielding a provider on the **same** backend each time (the kit closes and reopens it to
    check durability, and opens two at once). The checks write records under grain types
    and state names unique to each run, so the backend may hold other data.

    Raises :class:`AssertionError` naming the first rule broken. ``durable=False`` skips
    the checks that need data to outlive the provider (for in-memory providers).
    Each check is also available alone in :data:`STORAGE_CHECKS`.
    """
    await run_checks("storage", STORAGE_CHECKS, STORAGE_DURABILITY_CHECKS, open_storage, durable)
