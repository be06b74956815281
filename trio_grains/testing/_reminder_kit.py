"""The reminder-table conformance kit: every rule of :class:`~trio_grains.ReminderTable`.

Each check takes ``open_table``, a callable returning an async context manager that
yields a table on the same backend every time, and raises :class:`AssertionError` naming
the broken rule. Checks use grain types of their own (a random tag), so a table holding
rows from earlier runs does not disturb them.

May import: every layer below, the ``trio_grains`` package and ``_kit_helpers``. Not the
silo or the client: a kit checks a provider on its own.
"""

from __future__ import annotations

import math
import types
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TypeAlias

import attrs
import trio

from .._ids import GrainId
from .._reminders import ReminderEntry, ReminderTable
from ._kit_helpers import expect_success, new_tag, run_checks, sample_grain_ids, show

__all__ = [
    "REMINDER_CHECKS",
    "REMINDER_DURABILITY_CHECKS",
    "ReminderTableCheck",
    "ReminderTableOpener",
    "check_reminder_table",
]

ReminderTableOpener: TypeAlias = Callable[[], AbstractAsyncContextManager[ReminderTable]]
"""``open_table()``: a fresh table on the same backend each time it is called."""

ReminderTableCheck: TypeAlias = Callable[[ReminderTableOpener], Awaitable[None]]
"""One conformance check: ``await check(open_table)``; AssertionError when it fails."""

START = 1_700_000_000.25  # wall-clock seconds, as the reminder service stores them
TOLERANCE = 1e-3  # start_at and period may be stored with millisecond precision


def _grain(tag: str, key: str = "grain") -> GrainId:
    return GrainId.create(f"kit{tag}", key)


def _entry(gid: GrainId, name: str, start: float = START, period: float = 60.0) -> ReminderEntry:
    return ReminderEntry(gid, name, start, period)


def _key(entry: ReminderEntry) -> tuple[GrainId, str]:
    return (entry.grain_id, entry.name)


def _check_row(row: object, rule: str) -> ReminderEntry:
    if not isinstance(row, ReminderEntry):
        raise AssertionError(f"{rule}; the table returned {show(row)}, not a ReminderEntry")
    if not isinstance(row.etag, str):
        raise AssertionError(f"{rule}; the row's etag must be a str, it is {show(row.etag)}")
    return row


async def _upsert(table: ReminderTable, entry: ReminderEntry) -> str:
    etag = await expect_success(
        f"upsert of reminder {entry.name!r} of {entry.grain_id}", lambda: table.upsert(entry)
    )
    if not isinstance(etag, str):
        raise AssertionError(
            f"upsert must return the row's etag as a str; it returned {show(etag)}"
        )
    return etag


async def _read(table: ReminderTable, gid: GrainId, name: str) -> ReminderEntry | None:
    row = await expect_success(f"read of reminder {name!r} of {gid}", lambda: table.read(gid, name))
    return None if row is None else _check_row(row, "read must return a ReminderEntry or None")


def _same(row: ReminderEntry, expected: ReminderEntry, etag: str, rule: str) -> None:
    problems = []
    if row.grain_id != expected.grain_id:
        problems.append(f"grain_id {row.grain_id} (expected {expected.grain_id})")
    if row.name != expected.name:
        problems.append(f"name {row.name!r} (expected {expected.name!r})")
    if not math.isclose(row.start_at, expected.start_at, rel_tol=0, abs_tol=TOLERANCE):
        problems.append(f"start_at {row.start_at!r} (expected {expected.start_at!r})")
    if not math.isclose(row.period, expected.period, rel_tol=0, abs_tol=TOLERANCE):
        problems.append(f"period {row.period!r} (expected {expected.period!r})")
    if row.etag != etag:
        problems.append(f"etag {row.etag!r} (expected {etag!r})")
    if problems:
        raise AssertionError(
            f"{rule}; reminder {expected.name!r} of {expected.grain_id} reads back with "
            + ", ".join(problems)
        )


async def _expect_row(table: ReminderTable, entry: ReminderEntry, etag: str, rule: str) -> None:
    row = await _read(table, entry.grain_id, entry.name)
    if row is None:
        raise AssertionError(f"{rule}; reminder {entry.name!r} of {entry.grain_id} is missing")
    _same(row, entry, etag, rule)


async def _expect_no_row(table: ReminderTable, gid: GrainId, name: str, rule: str) -> None:
    row = await _read(table, gid, name)
    if row is not None:
        raise AssertionError(f"{rule}; reminder {name!r} of {gid} reads {show(row)}, expected None")


async def _rows_of(table: ReminderTable, gid: GrainId, rule: str) -> dict[str, ReminderEntry]:
    rows = await expect_success(f"read_grain of {gid}", lambda: table.read_grain(gid))
    found: dict[str, ReminderEntry] = {}
    for row in rows:
        row = _check_row(row, "read_grain must return a list of ReminderEntry")
        if row.grain_id != gid:
            raise AssertionError(f"{rule}; read_grain({gid}) returned a row of {row.grain_id}")
        if row.name in found:
            raise AssertionError(f"{rule}; read_grain({gid}) returned {row.name!r} twice")
        found[row.name] = row
    return found


async def _remove(table: ReminderTable, gid: GrainId, name: str, etag: str | None) -> object:
    return await expect_success(
        f"remove of reminder {name!r} of {gid} with etag {etag!r}",
        lambda: table.remove(gid, name, etag),
    )


# --- the checks --------------------------------------------------------------------------


async def check_missing_rows(open_table: ReminderTableOpener) -> None:
    """Reading what was never written: None, an empty list, remove returns False."""
    gid = _grain(new_tag())
    async with open_table() as table:
        await _expect_no_row(table, gid, "never", "a reminder never upserted must read as None")
        rows = await _rows_of(table, gid, "read_grain of a grain without reminders")
        if rows:
            raise AssertionError(
                f"read_grain of a grain without reminders must return []; it returned {rows}"
            )
        removed = await _remove(table, gid, "never", None)
        if removed is not False:
            raise AssertionError(
                f"remove of a missing reminder must return False; it returned {show(removed)}"
            )


async def check_upsert_and_read(open_table: ReminderTableOpener) -> None:
    """Upsert returns an etag; read, read_grain and read_all return the row with it."""
    tag = new_tag()
    gid = _grain(tag)
    entry = _entry(gid, "tick", START + 0.123, 90.5)
    async with open_table() as table:
        etag = await _upsert(table, entry)
        await _expect_row(table, entry, etag, "read must return the upserted row and its etag")
        rows = await _rows_of(table, gid, "read_grain")
        if set(rows) != {"tick"}:
            raise AssertionError(
                f"read_grain must return the grain's rows; it returned names {sorted(rows)}"
            )
        _same(rows["tick"], entry, etag, "read_grain must return the upserted row")
        everything = await expect_success("read_all", table.read_all)
        mine = [_check_row(r, "read_all must return ReminderEntry rows") for r in everything]
        mine = [r for r in mine if r.grain_id == gid]
        if len(mine) != 1:
            raise AssertionError(
                f"read_all must return every row once; it returned {len(mine)} rows of {gid}"
            )
        _same(mine[0], entry, etag, "read_all must return the upserted row")


async def check_upsert_replaces(open_table: ReminderTableOpener) -> None:
    """A second upsert of (grain, name) replaces the row and gives a new etag."""
    gid = _grain(new_tag())
    async with open_table() as table:
        first = _entry(gid, "tick", START, 60)
        seen = [await _upsert(table, first)]
        for entry in (
            _entry(gid, "tick", START + 3600, 120),
            _entry(gid, "tick", START + 3600, 120),
        ):
            etag = await _upsert(table, entry)
            if etag in seen:
                raise AssertionError(
                    f"the etag must change on every upsert; upsert #{len(seen) + 1} returned "
                    f"{etag!r} again"
                )
            seen.append(etag)
            await _expect_row(table, entry, etag, "upsert must replace the row")
        rows = await _rows_of(table, gid, "upsert must replace, not add")
        if len(rows) != 1:
            raise AssertionError(f"upsert must replace, not add; the grain has {len(rows)} rows")
        bogus = attrs.evolve(_entry(gid, "tick", START, 75), etag="not-an-etag-of-this-table")
        etag = await _upsert(table, bogus)
        await _expect_row(table, bogus, etag, "upsert must ignore entry.etag")


async def check_remove(open_table: ReminderTableOpener) -> None:
    """remove: the right etag or None deletes (True); a wrong or stale etag keeps the row."""
    gid = _grain(new_tag())
    async with open_table() as table:
        entry = _entry(gid, "a")
        stale = await _upsert(table, entry)
        etag = await _upsert(table, entry)
        for wrong, what in ((stale, "a stale etag"), (f"x{etag}", "a wrong etag")):
            removed = await _remove(table, gid, "a", wrong)
            if removed is not False:
                raise AssertionError(
                    f"remove with {what} must return False; it returned {show(removed)}"
                )
            await _expect_row(table, entry, etag, f"remove with {what} must keep the row")
        removed = await _remove(table, gid, "a", etag)
        if removed is not True:
            raise AssertionError(
                f"remove with the current etag must return True; it returned {show(removed)}"
            )
        await _expect_no_row(table, gid, "a", "remove with the current etag must delete")
        removed = await _remove(table, gid, "a", etag)
        if removed is not False:
            raise AssertionError(
                f"remove of a removed reminder must return False; it returned {show(removed)}"
            )
        await _upsert(table, _entry(gid, "b"))
        removed = await _remove(table, gid, "b", None)
        if removed is not True:
            raise AssertionError(
                f"remove with etag None must delete any row and return True; it returned "
                f"{show(removed)}"
            )
        await _expect_no_row(table, gid, "b", "remove with etag None must delete")


async def check_rows_are_independent(open_table: ReminderTableOpener) -> None:
    """Rows of different grains, and different names of one grain, do not mix."""
    tag = new_tag()
    one, two = _grain(tag, "one"), _grain(tag, "two")
    names = ["tick", "Tick", "tick ", "with/slash", 'it\'s "quoted"', "ünïcødé 🍕", "x" * 200]
    async with open_table() as table:
        etags: dict[tuple[GrainId, str], str] = {}
        entries: dict[tuple[GrainId, str], ReminderEntry] = {}
        for n, name in enumerate(names):
            for gid, offset in ((one, 0.0), (two, 1000.0)):
                entry = _entry(gid, name, START + offset + n, 60.0 + n)
                entries[_key(entry)] = entry
                etags[_key(entry)] = await _upsert(table, entry)
        for key, entry in entries.items():
            await _expect_row(
                table,
                entry,
                etags[key],
                "each (grain, name) must be a row of its own (names are case-sensitive)",
            )
        rows = await _rows_of(table, one, "read_grain")
        if set(rows) != set(names):
            raise AssertionError(
                f"read_grain must return exactly the grain's rows; it returned {sorted(rows)}, "
                f"expected {sorted(names)}"
            )
        await _remove(table, one, "tick", None)
        await _expect_no_row(table, one, "tick", "remove must delete its row")
        await _expect_row(
            table,
            entries[(two, "tick")],
            etags[(two, "tick")],
            "removing a reminder must not touch the same-named reminder of another grain",
        )
        await _expect_row(
            table,
            entries[(one, "Tick")],
            etags[(one, "Tick")],
            "removing a reminder must not touch other reminders of the grain",
        )
        every = await expect_success("read_all", table.read_all)
        mine = {_key(r) for r in every if r.grain_id in (one, two)}
        expected = set(entries) - {(one, "tick")}
        if mine != expected:
            raise AssertionError(
                f"read_all must return every row exactly once; missing {expected - mine}, "
                f"unexpected {mine - expected}"
            )


async def check_grain_id_key_kinds(open_table: ReminderTableOpener) -> None:
    """Grain ids of every key kind are distinct and round-trip."""
    tag = new_tag()
    ids = sample_grain_ids(tag)
    async with open_table() as table:
        etags = {}
        for n, gid in enumerate(ids):
            etags[gid] = await _upsert(table, _entry(gid, "tick", START + n))
        for n, gid in enumerate(ids):
            await _expect_row(
                table,
                _entry(gid, "tick", START + n),
                etags[gid],
                "every grain id must have rows of its own (ids differing only in case, "
                "spacing, Unicode normalization, key kind or type are different grains)",
            )
            rows = await _rows_of(table, gid, "read_grain by a grain id of any kind")
            if set(rows) != {"tick"}:
                raise AssertionError(
                    f"read_grain({gid}) must return its one row; it returned {sorted(rows)}"
                )
        every = await expect_success("read_all", table.read_all)
        mine = {r.grain_id for r in every if str(r.grain_id.type).startswith(f"kit{tag}")}
        if mine != set(ids):
            raise AssertionError(
                f"read_all must return the rows of every grain id; missing "
                f"{sorted(map(str, set(ids) - mine))[:5]}"
            )
        for gid in ids:
            removed = await _remove(table, gid, "tick", etags[gid])
            if removed is not True:
                raise AssertionError(f"remove of the row of {gid} must return True")


async def check_concurrent_upserts(open_table: ReminderTableOpener) -> None:
    """50 tasks upserting different rows all succeed."""
    tag = new_tag()
    count = 50
    entries = [_entry(_grain(tag, f"g{i % 10}"), f"r{i}", START + i) for i in range(count)]
    async with open_table() as table:
        etags: dict[tuple[GrainId, str], str] = {}
        failures: list[str] = []

        async def upsert(entry: ReminderEntry) -> None:
            try:
                etags[_key(entry)] = await table.upsert(entry)
            except Exception as exc:
                failures.append(f"{entry.name}: {type(exc).__name__}: {exc}")

        async with trio.open_nursery() as nursery:
            for entry in entries:
                nursery.start_soon(upsert, entry)
        if failures:
            raise AssertionError(
                f"{count} concurrent upserts of different rows must all succeed; "
                f"{len(failures)} failed, e.g. {failures[:3]}"
            )
        for entry in entries:
            await _expect_row(
                table, entry, etags[_key(entry)], "concurrent upserts must all be stored"
            )


async def check_durability(open_table: ReminderTableOpener) -> None:
    """Rows and etags survive closing and reopening the table."""
    tag = new_tag()
    gid = _grain(tag)
    kept = _entry(gid, "kept", START + 0.5, 86400.0)
    async with open_table() as table:
        etag = await _upsert(table, kept)
        await _upsert(table, _entry(gid, "removed"))
        await _remove(table, gid, "removed", None)
    async with open_table() as table:
        await _expect_row(table, kept, etag, "rows and etags must survive closing and reopening")
        await _expect_no_row(table, gid, "removed", "a removed row must stay removed")
        every = await expect_success("read_all", table.read_all)
        if not any(_key(r) == _key(kept) for r in every):
            raise AssertionError("read_all after reopening must return the rows written before")
    async with open_table() as first, open_table() as second:
        newer = await _upsert(first, attrs.evolve(kept, period=120.0))
        removed = await _remove(second, gid, "kept", etag)
        if removed is not False:
            raise AssertionError(
                "remove with a stale etag through a second table instance must return False"
            )
        removed = await _remove(second, gid, "kept", newer)
        if removed is not True:
            raise AssertionError(
                "remove with the etag another table instance returned must return True"
            )
        await _expect_no_row(first, gid, "kept", "a remove must be visible to other instances")


REMINDER_CHECKS: Mapping[str, ReminderTableCheck] = types.MappingProxyType(
    {
        "missing_rows": check_missing_rows,
        "upsert_and_read": check_upsert_and_read,
        "upsert_replaces": check_upsert_replaces,
        "remove": check_remove,
        "rows_are_independent": check_rows_are_independent,
        "grain_id_key_kinds": check_grain_id_key_kinds,
        "concurrent_upserts": check_concurrent_upserts,
        "durability": check_durability,
    }
)
"""Every reminder-table check by name, in the order :func:`check_reminder_table` runs them."""

REMINDER_DURABILITY_CHECKS: frozenset[str] = frozenset({"durability"})
"""The checks that close and reopen the table (skipped with ``durable=False``)."""


async def check_reminder_table(open_table: ReminderTableOpener, *, durable: bool = True) -> None:
    """Check that a reminder table keeps every rule of :class:`~trio_grains.ReminderTable`.

    *open_table* is called several times and must return an async context manager
    yielding a table on the **same** backend each time (the kit closes and reopens it, and
    opens two at once). Rows are written under grain types unique to each run, so the
    table may hold other rows.

    Raises :class:`AssertionError` naming the first rule broken. ``durable=False`` skips
    the checks that need rows to outlive the table (for in-memory tables). Each check is
    also available alone in :data:`REMINDER_CHECKS`.
    """
    await run_checks(
        "reminder table", REMINDER_CHECKS, REMINDER_DURABILITY_CHECKS, open_table, durable
    )
