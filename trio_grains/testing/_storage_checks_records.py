"""Grain-storage checks of single records: reads, writes, etags, clears and keys.

Registered in :data:`~trio_grains.testing.STORAGE_CHECKS` by :mod:`._storage_kit`.

May import: every layer below, the ``trio_grains`` package and ``_kit_helpers``;
``_storage_kit`` for type names only (it imports this module when it loads).
"""

from __future__ import annotations

import random
from functools import partial
from typing import TYPE_CHECKING

from .._ids import GrainId
from .._storage import InconsistentStateError
from ._kit_helpers import (
    LARGE_STATE,
    expect_conflict,
    expect_missing,
    expect_record,
    expect_success,
    new_state_and_grain,
    new_tag,
    sample_grain_ids,
    show,
    show_exc,
    write_record,
)

if TYPE_CHECKING:
    from ._storage_kit import StorageOpener


async def check_missing_record_reads_none(open_storage: StorageOpener) -> None:
    """A record that was never written reads as None."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        await expect_missing(storage, state, gid, "a record never written must read as None")


async def check_round_trip(open_storage: StorageOpener) -> None:
    """Written bytes read back exactly, with the etag write returned."""
    state, _ = new_state_and_grain()
    tag = new_tag()
    payloads = {
        "empty": b"",
        "nul": b"\x00",
        "nuls inside": b"a\x00b\x00\x00c",
        "all 256 byte values": bytes(range(256)),
        "all 256 byte values reversed": bytes(range(255, -1, -1)),
        "invalid utf-8": b"\xff\xfe\xc3\x28",
        "text": "grüße 🍕".encode(),
        "trailing spaces": b"data   ",
    }
    async with open_storage() as storage:
        for label, data in payloads.items():
            gid = GrainId.create(f"kit{tag}", label)
            etag = await write_record(storage, state, gid, data, None)
            await expect_record(
                storage, state, gid, data, etag, f"write then read must round-trip {label} bytes"
            )


async def check_etag_changes_on_every_write(open_storage: StorageOpener) -> None:
    """Every write, even of the same bytes, gives a new etag."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        seen: list[str] = []
        etag: str | None = None
        for data in (b"same", b"same", b"same", b"other", b"same"):
            etag = await write_record(storage, state, gid, data, etag)
            if etag in seen:
                raise AssertionError(
                    f"the etag must change on every write; write #{len(seen) + 1} returned "
                    f"{etag!r} again (etags so far: {seen})"
                )
            seen.append(etag)
            await expect_record(
                storage, state, gid, data, etag, "read must return the etag the last write returned"
            )


async def check_stale_etag_write_conflicts(open_storage: StorageOpener) -> None:
    """A write with an older etag raises InconsistentStateError and changes nothing."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        first = await write_record(storage, state, gid, b"v1", None)
        second = await write_record(storage, state, gid, b"v2", first)
        await expect_conflict(
            "write with a stale etag", lambda: storage.write(state, gid, b"v3", first)
        )
        await expect_record(
            storage, state, gid, b"v2", second, "a write with a stale etag must change nothing"
        )
        await expect_conflict(
            "write with an etag the provider never issued",
            lambda: storage.write(state, gid, b"v3", f"bogus-{second}"),
        )
        await expect_record(
            storage, state, gid, b"v2", second, "a write with a wrong etag must change nothing"
        )


async def check_none_etag_against_existing_record_conflicts(open_storage: StorageOpener) -> None:
    """etag None means "I expect no record": against an existing record it conflicts."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        etag = await write_record(storage, state, gid, b"v1", None)
        await expect_conflict(
            "write with etag None to an existing record",
            lambda: storage.write(state, gid, b"v2", None),
        )
        await expect_record(
            storage, state, gid, b"v1", etag, "a write with etag None must not overwrite a record"
        )


async def check_etag_against_missing_record_conflicts(open_storage: StorageOpener) -> None:
    """A write or clear with an etag, to a record that does not exist, conflicts."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        await expect_conflict(
            "write with an etag to a missing record",
            lambda: storage.write(state, gid, b"v1", "1"),
        )
        await expect_missing(
            storage, state, gid, "a write with an etag to a missing record must create nothing"
        )
        await expect_conflict(
            "clear with an etag of a missing record", lambda: storage.clear(state, gid, "1")
        )


async def check_clear(open_storage: StorageOpener) -> None:
    """Clear with the current etag deletes; the record can then be created again."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        etag = await write_record(storage, state, gid, b"v1", None)
        await expect_success("clear with the current etag", lambda: storage.clear(state, gid, etag))
        await expect_missing(storage, state, gid, "clear with the current etag must delete")
        await expect_conflict(
            "write with the etag of a cleared record",
            lambda: storage.write(state, gid, b"v2", etag),
        )
        again = await write_record(storage, state, gid, b"v3", None)
        await expect_record(
            storage, state, gid, b"v3", again, "a cleared record must be writable with etag None"
        )


async def check_stale_etag_clear_conflicts(open_storage: StorageOpener) -> None:
    """Clear with a stale etag (or None) raises InconsistentStateError; the record stays."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        first = await write_record(storage, state, gid, b"v1", None)
        second = await write_record(storage, state, gid, b"v2", first)
        await expect_conflict("clear with a stale etag", lambda: storage.clear(state, gid, first))
        await expect_record(
            storage, state, gid, b"v2", second, "a clear with a stale etag must keep the record"
        )
        await expect_conflict(
            "clear with etag None of an existing record", lambda: storage.clear(state, gid, None)
        )
        await expect_record(
            storage, state, gid, b"v2", second, "a clear with etag None must keep the record"
        )


async def check_clear_missing_record(open_storage: StorageOpener) -> None:
    """Clearing a record that does not exist with etag None succeeds (and creates nothing)."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        await expect_success(
            "clear of a missing record with etag None", lambda: storage.clear(state, gid, None)
        )
        await expect_success(
            "a second clear of a missing record with etag None",
            lambda: storage.clear(state, gid, None),
        )
        await expect_missing(storage, state, gid, "clear of a missing record must create nothing")
        await write_record(storage, state, gid, b"v1", None)


async def check_state_names_are_independent(open_storage: StorageOpener) -> None:
    """Two state names of one grain are two records (names are case-sensitive)."""
    tag = new_tag()
    _, gid = new_state_and_grain(tag)
    names = [f"kit-{tag}", f"KIT-{tag}", f"kit-{tag}.v2", f"kit-{tag}_b", f"kit-{tag}-c"]
    async with open_storage() as storage:
        etags = {}
        for name in names:
            etags[name] = await write_record(storage, name, gid, name.encode(), None)
        for name in names:
            await expect_record(
                storage,
                name,
                gid,
                name.encode(),
                etags[name],
                "records of different state names of one grain must be independent",
            )
        await storage.clear(names[0], gid, etags.pop(names[0]))
        await expect_missing(storage, names[0], gid, "clear must delete only its state name")
        for name, etag in etags.items():
            await expect_record(
                storage,
                name,
                gid,
                name.encode(),
                etag,
                f"clearing state {names[0]!r} must leave state {name!r} of the same grain",
            )


async def check_grain_id_key_kinds(open_storage: StorageOpener) -> None:
    """Ids of every key kind round-trip and are distinct records."""
    tag = new_tag()
    state = f"kit-{tag}"
    ids = sample_grain_ids(tag)
    async with open_storage() as storage:
        etags: dict[GrainId, str] = {}
        for gid in ids:
            try:
                etags[gid] = await storage.write(state, gid, f"data of {gid}".encode(), None)
            except InconsistentStateError as exc:
                raise AssertionError(
                    f"every grain id must be a record of its own; the first write of {gid} "
                    "with etag None conflicted, so it collides with one of the ids written "
                    f"before it: {show([str(g) for g in etags], 300)}"
                ) from exc
            except Exception as exc:
                raise AssertionError(
                    f"a write of grain {gid} must succeed; it raised {show_exc(exc)}"
                ) from exc
        for gid in ids:
            await expect_record(
                storage,
                state,
                gid,
                f"data of {gid}".encode(),
                etags[gid],
                "every grain id must be a record of its own (ids differing only in case, "
                "spacing, Unicode normalization, key kind or type are different grains)",
            )
        for gid in ids:
            etags[gid] = await write_record(storage, state, gid, f"v2 {gid}".encode(), etags[gid])
        for gid in ids:
            await expect_success(f"clear of {gid}", partial(storage.clear, state, gid, etags[gid]))
            await expect_missing(storage, state, gid, f"clear must delete the record of {gid}")


async def check_large_state(open_storage: StorageOpener) -> None:
    """A 4 MiB record round-trips and can be overwritten."""
    state, gid = new_state_and_grain()
    rng = random.Random(1234)
    big = rng.randbytes(LARGE_STATE)
    async with open_storage() as storage:
        etag = await write_record(storage, state, gid, big, None)
        await expect_record(
            storage, state, gid, big, etag, "a 4 MiB state must round-trip byte for byte"
        )
        bigger = big[::-1]
        etag = await write_record(storage, state, gid, bigger, etag)
        await expect_record(storage, state, gid, bigger, etag, "a 4 MiB state must be overwritable")
        await expect_success("clear of a 4 MiB state", partial(storage.clear, state, gid, etag))
