"""The reminder table against a real server."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import trio

from trio_grains import GrainId, ReminderEntry

GID = GrainId.create("alarm", "bob/'x' ✓")
START = 1_700_000_000.123456


def entry(gid: GrainId = GID, name: str = "wake", start: float = START) -> ReminderEntry:
    return ReminderEntry(gid, name, start, 60.0)


async def test_upsert_read_and_replace(open_table: Any) -> None:
    async with open_table() as table:
        assert await table.read(GID, "wake") is None
        assert await table.read_grain(GID) == []
        etag = await table.upsert(entry())
        assert await table.read(GID, "wake") == attrs.evolve(entry(), etag=etag)
        newer = await table.upsert(attrs.evolve(entry(), period=3600.5, etag="ignored"))
        assert newer not in (etag, "ignored")
        row = await table.read(GID, "wake")
        assert row == ReminderEntry(GID, "wake", START, 3600.5, newer)


async def test_rows_by_grain_and_all(open_table: Any) -> None:
    other = GrainId.create("alarm", uuid.UUID(int=5), "ext")
    async with open_table() as table:
        etags = {
            (gid, name): await table.upsert(entry(gid, name))
            for gid in (GID, other)
            for name in ("a", "b/c", "ü")
        }
        mine = await table.read_grain(GID)
        assert {(r.grain_id, r.name) for r in mine} == {(GID, n) for n in ("a", "b/c", "ü")}
        every = await table.read_all()
        assert {(r.grain_id, r.name): r.etag for r in every} == etags


async def test_remove(open_table: Any) -> None:
    async with open_table() as table:
        assert await table.remove(GID, "wake", None) is False
        etag = await table.upsert(entry())
        assert await table.remove(GID, "wake", "stale") is False
        assert await table.read(GID, "wake") is not None
        assert await table.remove(GID, "wake", etag) is True
        assert await table.read(GID, "wake") is None
        await table.upsert(entry())
        assert await table.remove(GID, "wake", None) is True
        assert await table.read_all() == []


async def test_rows_survive_reopening_and_concurrent_upserts(open_table: Any) -> None:
    gids = [GrainId.create("alarm", i) for i in range(40)]
    async with open_table() as table:
        etags: dict[GrainId, str] = {}

        async def upsert(gid: GrainId) -> None:
            etags[gid] = await table.upsert(entry(gid))

        async with trio.open_nursery() as nursery:
            for gid in gids:
                nursery.start_soon(upsert, gid)
    async with open_table() as table:
        rows = {row.grain_id: row for row in await table.read_all()}
        assert rows == {gid: attrs.evolve(entry(gid), etag=etags[gid]) for gid in gids}
