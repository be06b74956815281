"""The membership-table conformance kit: every rule of :class:`~trio_grains.MembershipTable`.

A table provider is compare-and-set storage of rows (the core's
:class:`~trio_grains.MembershipProtocol` does joining, heartbeats and declaring dead), so
most checks here are about rows: versions, insert-if-absent, replace or delete only at the
current version with exactly one winner among racers, bytes kept exactly, a watch that
delivers every change, tables of one cluster sharing rows and other clusters invisible.
The last checks run the protocol over the table, which must then behave as it does on the
in-memory table, malformed rows skipped and counted.

Each check takes ``open_table(cluster_id)``, a callable returning an async context manager
that yields a table of that cluster (the same rows for the same id, every time it is
called), and raises :class:`AssertionError` naming the broken rule. Each check uses
cluster ids of its own (a random tag), so a backend holding other data does not disturb it.

May import: every layer below, the ``trio_grains`` package and ``_kit_helpers``. Not the
silo or the client: a kit checks a provider on its own.
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TypeAlias

import trio

from .._cluster.membership import MembershipTable
from .._cluster.silo_entries import (
    MembershipRow,
    MembershipRows,
    SiloEntry,
    SiloStatus,
    encode_silo_row,
)
from .._exceptions import SiloAlreadyJoinedError, SiloDeclaredDeadError
from ._kit_helpers import expect_success, new_tag, run_checks, show, show_exc

__all__ = [
    "MEMBERSHIP_CHECKS",
    "MembershipTableCheck",
    "MembershipTableOpener",
    "check_membership_table",
]

MembershipTableOpener: TypeAlias = Callable[[str], AbstractAsyncContextManager[MembershipTable]]
"""``open_table(cluster_id)``: a table of that cluster, on the same backend every time."""

MembershipTableCheck: TypeAlias = Callable[[MembershipTableOpener], Awaitable[None]]
"""One conformance check: ``await check(open_table)``; AssertionError when it fails."""

WAIT = 10.0  # seconds a watch may take to deliver a change
RACERS = 20
ODD_SILO_IDS = [
    "plain",
    "10.0.0.1:11111@42",
    "with spaces",
    "dots.in.it",
    "star*",
    "gt>",
    "=",
    "=41",
    "slash/and\\back",
    "ünïcödé 日本 🎉",
    "x" * 100,
]


def _cluster(tag: str, n: int = 0) -> str:
    return f"kit{tag}{n}"


def _entry(silo_id: str) -> SiloEntry:
    return SiloEntry(silo_id, f"grains.kit.silo.{len(silo_id)}", roles=frozenset({"web"}))


def _version(rule: str, value: object) -> int:
    if type(value) is not int or value <= 0:
        raise AssertionError(
            f"{rule} must return the new version, a positive int; got {show(value)}"
        )
    return value


def _check_row(rule: str, row: object, key: str, data: bytes, version: int | None) -> None:
    if not isinstance(row, MembershipRow):
        raise AssertionError(f"{rule}: read_row must return a MembershipRow; got {show(row)}")
    if row.key != key or row.data != data or (version is not None and row.version != version):
        raise AssertionError(
            f"{rule}: read_row({key!r}) returned {show(row, 200)}, expected key {key!r}, "
            f"data {show(data)}, version {version}"
        )


async def _read(table: MembershipTable, key: str) -> MembershipRow | None:
    row = await expect_success(f"read_row({key!r})", lambda: table.read_row(key))
    if row is not None and not isinstance(row, MembershipRow):
        raise AssertionError(f"read_row must return a MembershipRow or None; got {show(row)}")
    return row


async def _rows(table: MembershipTable) -> MembershipRows:
    rows = await expect_success("read_rows()", table.read_rows)
    if not isinstance(rows, MembershipRows):
        raise AssertionError(f"read_rows must return MembershipRows; got {show(rows)}")
    return rows


async def _insert(table: MembershipTable, key: str, data: bytes) -> int:
    rule = f"insert_row({key!r}) of a key without a row"
    return _version(rule, await expect_success(rule, lambda: table.insert_row(key, data)))


async def _watch_until(
    snapshots: AsyncIterator[MembershipRows],
    predicate: Callable[[MembershipRows], bool],
    rule: str,
    last: list[int],
) -> MembershipRows:
    """The first snapshot meeting *predicate*; versions must increase (*last* holds the
    previous one)."""
    with trio.move_on_after(WAIT):
        async for rows in snapshots:
            if not isinstance(rows, MembershipRows):
                raise AssertionError(f"watch_rows must yield MembershipRows; got {show(rows)}")
            if rows.version <= last[0]:
                raise AssertionError(
                    f"watch_rows versions must increase strictly; {rows.version} came after "
                    f"{last[0]}"
                )
            last[0] = rows.version
            if predicate(rows):
                return rows
        raise AssertionError(f"{rule}: the watch ended")
    raise AssertionError(f"{rule}: not seen by the watch within {WAIT} s")


# --- rows ------------------------------------------------------------------------------------


async def check_missing_row(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        key = table.key_of("nobody")
        if await _read(table, key) is not None:
            raise AssertionError("read_row of a key never written must return None")
        result = await expect_success(
            "update_row of a missing row", lambda: table.update_row(key, b"x", 1)
        )
        if result is not None:
            raise AssertionError(
                f"update_row of a missing row must return None; got {show(result)}"
            )
        deleted = await expect_success(
            "delete_row of a missing row", lambda: table.delete_row(key, 1)
        )
        if deleted is not False:
            raise AssertionError(
                f"delete_row of a missing row must return False; got {show(deleted)}"
            )
        if await _read(table, key) is not None:
            raise AssertionError("a refused update_row must not create the row")


async def check_insert_if_absent(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        key = table.key_of("a")
        version = await _insert(table, key, b"first")
        _check_row("insert_row stores the row", await _read(table, key), key, b"first", version)
        again = await expect_success(
            "insert_row of a key with a row", lambda: table.insert_row(key, b"second")
        )
        if again is not None:
            raise AssertionError(
                f"insert_row of a key that has a row must return None; got {show(again)}"
            )
        _check_row(
            "a refused insert_row changes nothing", await _read(table, key), key, b"first", version
        )


async def check_update_compare_and_set(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        key = table.key_of("a")
        v1 = await _insert(table, key, b"one")
        rule = "update_row at the current version"
        v2 = _version(rule, await expect_success(rule, lambda: table.update_row(key, b"two", v1)))
        if v2 <= v1:
            raise AssertionError(f"{rule} must give a larger version; {v2} after {v1}")
        _check_row(rule, await _read(table, key), key, b"two", v2)
        stale = await expect_success(
            "update_row at a stale version", lambda: table.update_row(key, b"stale", v1)
        )
        if stale is not None:
            raise AssertionError(
                f"update_row at a stale version must return None; got {show(stale)}"
            )
        _check_row("a refused update_row changes nothing", await _read(table, key), key, b"two", v2)


async def check_delete_compare_and_set(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        key = table.key_of("a")
        v1 = await _insert(table, key, b"one")
        v2 = _version("update_row", await table.update_row(key, b"two", v1))
        stale = await expect_success(
            "delete_row at a stale version", lambda: table.delete_row(key, v1)
        )
        if stale is not False:
            raise AssertionError(
                f"delete_row at a stale version must return False; got {show(stale)}"
            )
        _check_row("a refused delete_row changes nothing", await _read(table, key), key, b"two", v2)
        done = await expect_success(
            "delete_row at the current version", lambda: table.delete_row(key, v2)
        )
        if done is not True:
            raise AssertionError(
                f"delete_row at the current version must return True; got {show(done)}"
            )
        if await _read(table, key) is not None:
            raise AssertionError("read_row after delete_row must return None")
        if await table.update_row(key, b"three", v2) is not None:
            raise AssertionError("update_row of a deleted row must return None")
        v3 = await _insert(table, key, b"again")
        if v3 <= v2:
            raise AssertionError(f"a row inserted again must get a larger version; {v3} after {v2}")


async def _race(n: int, op: Callable[[int], Awaitable[object]]) -> list[object]:
    results: list[object] = [None] * n

    async def one(i: int) -> None:
        results[i] = await op(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return results


async def check_concurrent_inserts_one_winner(open_table: MembershipTableOpener) -> None:
    cluster = _cluster(new_tag())
    async with open_table(cluster) as one, open_table(cluster) as two:
        key = one.key_of("contested")
        tables = (one, two)
        results = await expect_success(
            "concurrent insert_row",
            lambda: _race(RACERS, lambda i: tables[i % 2].insert_row(key, b"racer %d" % i)),
        )
        winners = [i for i, v in enumerate(results) if v is not None]
        if len(winners) != 1:
            raise AssertionError(
                f"of {RACERS} concurrent insert_row of one key (two tables of one cluster), "
                f"exactly one must succeed; {len(winners)} did"
            )
        version = _version("insert_row", results[winners[0]])
        _check_row(
            "the stored row is the winning insert's",
            await _read(two, key),
            key,
            b"racer %d" % winners[0],
            version,
        )


async def check_concurrent_updates_one_winner(open_table: MembershipTableOpener) -> None:
    cluster = _cluster(new_tag())
    async with open_table(cluster) as one, open_table(cluster) as two:
        key = one.key_of("contested")
        v1 = await _insert(one, key, b"start")
        tables = (one, two)
        results = await expect_success(
            "concurrent update_row",
            lambda: _race(RACERS, lambda i: tables[i % 2].update_row(key, b"racer %d" % i, v1)),
        )
        winners = [i for i, v in enumerate(results) if v is not None]
        if len(winners) != 1:
            raise AssertionError(
                f"of {RACERS} concurrent update_row at one version, exactly one must succeed; "
                f"{len(winners)} did"
            )
        version = _version("update_row", results[winners[0]])
        _check_row(
            "the stored row is the winning update's",
            await _read(one, key),
            key,
            b"racer %d" % winners[0],
            version,
        )


async def check_versions_increase_table_wide(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        a, b = table.key_of("a"), table.key_of("b")
        va = await _insert(table, a, b"a")
        vb = await _insert(table, b, b"b")
        va2 = _version("update_row", await table.update_row(a, b"a2", va))
        if not va < vb < va2:
            raise AssertionError(
                "every write must get a version larger than every version before, for any "
                f"key (views are ordered by them); got {va}, {vb}, then {va2}"
            )
        rows = await _rows(table)
        if rows.version < va2:
            raise AssertionError(
                f"read_rows().version must be the latest write's ({va2}); got {rows.version}"
            )
        if not await table.delete_row(b, vb):
            raise AssertionError("delete_row at the current version must return True")
        after = await _rows(table)
        if after.version <= rows.version:
            raise AssertionError(
                f"a delete must make read_rows().version larger; {after.version} after "
                f"{rows.version}"
            )


async def check_read_rows(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        empty = await _rows(table)
        if empty.rows:
            raise AssertionError(
                f"read_rows of a new cluster must be empty; got {show(empty.rows)}"
            )
        written = {}
        for silo_id in ("a", "b", "c"):
            key = table.key_of(silo_id)
            written[key] = MembershipRow(
                key, silo_id.encode(), await _insert(table, key, silo_id.encode())
            )
        c = table.key_of("c")
        if not await table.delete_row(c, written.pop(c).version):
            raise AssertionError("delete_row at the current version must return True")
        rows = await _rows(table)
        if dict(rows.rows) != written:
            raise AssertionError(
                f"read_rows must return every row by key; got {show(dict(rows.rows), 300)}, "
                f"expected {show(written, 300)}"
            )


async def check_watch(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        a, b = table.key_of("a"), table.key_of("b")
        va = await _insert(table, a, b"a")
        last = [-1]
        async with table.watch_rows() as snapshots:
            await _watch_until(
                snapshots,
                lambda r: a in r.rows,
                "the first rows of watch_rows must be the current rows",
                last,
            )
            vb = await _insert(table, b, b"b")
            await _watch_until(
                snapshots,
                lambda r: b in r.rows and r.rows[b] == MembershipRow(b, b"b", vb),
                "watch_rows must deliver an insert",
                last,
            )
            va2 = _version("update_row", await table.update_row(a, b"a2", va))
            await _watch_until(
                snapshots,
                lambda r: r.rows.get(a) == MembershipRow(a, b"a2", va2),
                "watch_rows must deliver an update",
                last,
            )
            if not await table.delete_row(b, vb):
                raise AssertionError("delete_row at the current version must return True")
            await _watch_until(
                snapshots, lambda r: b not in r.rows, "watch_rows must deliver a delete", last
            )


async def check_tables_share_rows(open_table: MembershipTableOpener) -> None:
    cluster = _cluster(new_tag())
    async with open_table(cluster) as one, open_table(cluster) as two:
        key = one.key_of("a")
        if two.key_of("a") != key:
            raise AssertionError("key_of must give the same key in every table of a cluster")
        async with two.watch_rows() as snapshots:
            last = [-1]
            await _watch_until(snapshots, lambda r: True, "the first rows of watch_rows", last)
            version = await _insert(one, key, b"shared")
            _check_row(
                "a row written by one table of a cluster is read by another",
                await _read(two, key),
                key,
                b"shared",
                version,
            )
            await _watch_until(
                snapshots,
                lambda r: key in r.rows,
                "a row written by one table of a cluster is seen by another's watch",
                last,
            )


async def check_other_clusters_invisible(open_table: MembershipTableOpener) -> None:
    tag = new_tag()
    async with open_table(_cluster(tag, 1)) as mine, open_table(_cluster(tag, 2)) as other:
        key = mine.key_of("a")
        version = await _insert(mine, key, b"mine")
        if await _read(other, key) is not None:
            raise AssertionError("a table must not read the rows of another cluster")
        if (await _rows(other)).rows:
            raise AssertionError("read_rows must not return the rows of another cluster")
        await _insert(other, other.key_of("a"), b"other")
        _check_row(
            "a write in another cluster changes nothing here",
            await _read(mine, key),
            key,
            b"mine",
            version,
        )


async def check_silo_id_keys(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        keys = [table.key_of(silo_id) for silo_id in ODD_SILO_IDS]
        if any(not isinstance(k, str) or not k for k in keys):
            raise AssertionError(f"key_of must return non-empty strings; got {show(keys, 300)}")
        if len(set(keys)) != len(keys):
            raise AssertionError("key_of must give every silo id its own key")
        if keys != [table.key_of(silo_id) for silo_id in ODD_SILO_IDS]:
            raise AssertionError("key_of must give the same key every time")
        for silo_id, key in zip(ODD_SILO_IDS, keys, strict=True):
            data = silo_id.encode()
            version = await _insert(table, key, data)
            _check_row(
                f"the row of silo id {silo_id!r}", await _read(table, key), key, data, version
            )


async def check_bytes_kept_exactly(open_table: MembershipTableOpener) -> None:
    samples = [
        b"not json",
        b"\xff\xfe\x00 binary",
        b"[" * 1000,
        b'{"silo_id": 1}',
        b"x" * 60_000,
    ]
    async with open_table(_cluster(new_tag())) as table:
        for i, data in enumerate(samples):
            key = table.key_of(f"s{i}")
            version = await _insert(table, key, data)
            _check_row(
                "rows must be kept as written, whatever the bytes (the core decodes them)",
                await _read(table, key),
                key,
                data,
                version,
            )
        rows = await _rows(table)
        if sorted(r.data for r in rows.rows.values()) != sorted(samples):
            raise AssertionError("read_rows must return every row's bytes as written")


# --- the protocol over the table -----------------------------------------------------------


async def _expect_raise(
    rule: str, exc_type: type[Exception], op: Callable[[], Awaitable[object]]
) -> None:
    try:
        result = await op()
    except exc_type:
        return
    except Exception as exc:
        raise AssertionError(
            f"{rule} must raise {exc_type.__name__}; it raised {show_exc(exc)}"
        ) from exc
    raise AssertionError(f"{rule} must raise {exc_type.__name__}; it returned {show(result)}")


async def check_protocol(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        if (await expect_success("snapshot", table.snapshot)).entries:
            raise AssertionError("the snapshot of a new cluster must be empty")
        a = await expect_success("join", lambda: table.join(_entry("10.0.0.1:1@7")))
        sid = a.silo_id
        if (a.status, a.roles) != (SiloStatus.JOINING, frozenset({"web"})):
            raise AssertionError(f"join must store the row as JOINING; got {show(a, 200)}")
        await _expect_raise(
            "a second join of a live silo", SiloAlreadyJoinedError, lambda: table.join(_entry(sid))
        )
        b = await expect_success("heartbeat", lambda: table.heartbeat(sid, load=3))
        if b.version <= a.version or b.load != 3:
            raise AssertionError(
                f"heartbeat must store a new version and the load; got {show(b, 200)}"
            )
        active = await table.set_status(sid, SiloStatus.ACTIVE)
        if active is None or active.status is not SiloStatus.ACTIVE:
            raise AssertionError(f"set_status(ACTIVE) must store it; got {show(active, 200)}")
        same = await table.set_status(sid, SiloStatus.DEAD, if_version=b.version)
        if same != active:
            raise AssertionError("set_status at a stale if_version must change nothing")
        dead = await table.set_status(sid, SiloStatus.DEAD, if_version=active.version)
        if dead is None or dead.status is not SiloStatus.DEAD:
            raise AssertionError(
                f"set_status(DEAD) at the current version must store it; got {show(dead)}"
            )
        if await table.set_status(sid, SiloStatus.DEAD) != dead:
            raise AssertionError("setting DEAD again must change nothing")
        await _expect_raise(
            "a heartbeat of a DEAD silo", SiloDeclaredDeadError, lambda: table.heartbeat(sid)
        )
        await _expect_raise(
            "leaving DEAD", SiloDeclaredDeadError, lambda: table.set_status(sid, SiloStatus.ACTIVE)
        )
        view = await table.snapshot()
        if view.get(sid) != dead or view.version < dead.version:
            raise AssertionError(f"the snapshot must show the DEAD row; got {show(view, 300)}")
        rejoined = await expect_success("a join over a DEAD row", lambda: table.join(_entry(sid)))
        await table.leave(sid)
        await table.leave(sid)
        if await table.set_status(sid, SiloStatus.DEAD) is not None:
            raise AssertionError("set_status of a silo that left must return None")
        await _expect_raise(
            "a heartbeat after leaving", SiloDeclaredDeadError, lambda: table.heartbeat(sid)
        )
        again = await expect_success("a join after leaving", lambda: table.join(_entry(sid)))
        if again.version <= rejoined.version:
            raise AssertionError("a join after leaving must get a larger version")


async def check_one_dead_declaration(open_table: MembershipTableOpener) -> None:
    cluster = _cluster(new_tag())
    async with open_table(cluster) as one, open_table(cluster) as two:
        row = await one.join(_entry("victim"))
        tables = (one, two)
        results = await _race(
            RACERS,
            lambda i: tables[i % 2].set_status("victim", SiloStatus.DEAD, if_version=row.version),
        )
        versions = {r.version for r in results if isinstance(r, SiloEntry)}
        if len(versions) != 1 or any(
            not isinstance(r, SiloEntry) or r.status is not SiloStatus.DEAD for r in results
        ):
            raise AssertionError(
                f"{RACERS} silos declaring one silo dead must store one DEAD row and all see "
                f"it; got {show(results, 300)}"
            )


async def check_malformed_rows_skipped(open_table: MembershipTableOpener) -> None:
    async with open_table(_cluster(new_tag())) as table:
        await table.join(_entry("good"))
        garbage = table.key_of("garbage")
        await _insert(table, garbage, b"not json")
        impostor = table.key_of("impostor")  # a valid row of another silo, under this key
        await _insert(table, impostor, encode_silo_row(_entry("good"), table.key_of))
        before = table.malformed_rows
        for _ in range(2):
            view = await table.snapshot()
            if sorted(view.entries) != ["good"]:
                raise AssertionError(
                    f"malformed rows must be skipped by snapshot(); got {sorted(view.entries)}"
                )
        if table.malformed_rows - before != 2:
            raise AssertionError(
                "each malformed row must be counted once in malformed_rows, however often it "
                f"is read; counted {table.malformed_rows - before} for 2"
            )
        joined = await expect_success(
            "a join over a malformed row of its own key", lambda: table.join(_entry("garbage"))
        )
        if joined.status is not SiloStatus.JOINING:
            raise AssertionError("a join must replace a malformed row")


MEMBERSHIP_CHECKS: Mapping[str, MembershipTableCheck] = types.MappingProxyType(
    {
        "missing_row": check_missing_row,
        "insert_if_absent": check_insert_if_absent,
        "update_compare_and_set": check_update_compare_and_set,
        "delete_compare_and_set": check_delete_compare_and_set,
        "concurrent_inserts_one_winner": check_concurrent_inserts_one_winner,
        "concurrent_updates_one_winner": check_concurrent_updates_one_winner,
        "versions_increase_table_wide": check_versions_increase_table_wide,
        "read_rows": check_read_rows,
        "watch": check_watch,
        "tables_share_rows": check_tables_share_rows,
        "other_clusters_invisible": check_other_clusters_invisible,
        "silo_id_keys": check_silo_id_keys,
        "bytes_kept_exactly": check_bytes_kept_exactly,
        "protocol": check_protocol,
        "one_dead_declaration": check_one_dead_declaration,
        "malformed_rows_skipped": check_malformed_rows_skipped,
    }
)
"""Every membership-table check by name, in the order :func:`check_membership_table` runs
them."""


async def check_membership_table(open_table: MembershipTableOpener) -> None:
    """Check that a membership table keeps every rule of :class:`~trio_grains.MembershipTable`.

    *open_table(cluster_id)* is called several times and must return an async context
    manager yielding a table of that cluster on the **same** backend each time (the kit
    opens two tables of one cluster at once, and tables of two clusters). Cluster ids are
    ``kit<random tag><n>``: letters and digits.

    Raises :class:`AssertionError` naming the first rule broken. Each check is also
    available alone in :data:`MEMBERSHIP_CHECKS`.
    """
    await run_checks("membership table", MEMBERSHIP_CHECKS, frozenset(), open_table, True)
