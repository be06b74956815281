"""Grain-storage checks of concurrent writers, cancelled writes and durability.

Registered in :data:`~trio_grains.testing.STORAGE_CHECKS` by :mod:`._storage_kit`.

May import: every layer below, the ``trio_grains`` package and ``_kit_helpers``;
``_storage_kit`` for type names only (it imports this module when it loads).
"""

from __future__ import annotations

import random
from functools import partial
from typing import TYPE_CHECKING

import trio

from .._ids import GrainId
from .._storage import GrainStorage, InconsistentStateError
from ._kit_helpers import (
    LARGE_STATE,
    expect_conflict,
    expect_missing,
    expect_record,
    expect_success,
    new_state_and_grain,
    new_tag,
    read_record,
    show,
    show_exc,
    write_record,
)

if TYPE_CHECKING:
    from ._storage_kit import StorageOpener


async def _race(
    storage: GrainStorage, state: str, gid: GrainId, writers: int, expected: str | None
) -> tuple[list[tuple[int, str]], list[str]]:
    """*writers* tasks write the record with etag *expected*: (winners, unexpected errors)."""
    winners: list[tuple[int, str]] = []
    others: list[str] = []

    async def write(i: int) -> None:
        try:
            new = await storage.write(state, gid, f"writer {i}".encode(), expected)
        except InconsistentStateError:
            pass
        except Exception as exc:
            others.append(f"writer {i}: {show_exc(exc)}")
        else:
            winners.append((i, new))

    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(write, i)
    return winners, others


async def check_concurrent_writers_one_record(open_storage: StorageOpener) -> None:
    """20 tasks writing one record with the same etag: exactly one wins."""
    state, gid = new_state_and_grain()
    writers = 20
    async with open_storage() as storage:
        for start in ("no record", "an existing record"):
            expected = (
                None if start == "no record" else await write_record(storage, state, gid, b"", None)
            )
            winners, others = await _race(storage, state, gid, writers, expected)
            if others:
                raise AssertionError(
                    f"{writers} concurrent writes to {start} with the same etag: the losers "
                    f"must raise InconsistentStateError; got {others[:3]}"
                )
            if len(winners) != 1:
                raise AssertionError(
                    f"{writers} concurrent writes to {start} with the same etag: exactly one "
                    f"must succeed; {len(winners)} did (writers {[i for i, _ in winners]})"
                )
            i, etag = winners[0]
            await expect_record(
                storage,
                state,
                gid,
                f"writer {i}".encode(),
                etag,
                f"after concurrent writes to {start}, the record must be the winner's",
            )
            await storage.clear(state, gid, etag)


async def check_concurrent_writers_distinct_records(open_storage: StorageOpener) -> None:
    """50 tasks writing 50 different records all succeed."""
    tag = new_tag()
    state = f"kit-{tag}"
    count = 50
    ids = [GrainId.create(f"kit{tag}", i) for i in range(count)]
    async with open_storage() as storage:
        etags: dict[GrainId, str] = {}
        failures: list[str] = []

        async def write(gid: GrainId) -> None:
            try:
                first = await storage.write(state, gid, f"{gid} v1".encode(), None)
                etags[gid] = await storage.write(state, gid, f"{gid} v2".encode(), first)
            except Exception as exc:
                failures.append(f"{gid}: {show_exc(exc)}")

        async with trio.open_nursery() as nursery:
            for gid in ids:
                nursery.start_soon(write, gid)
        if failures:
            raise AssertionError(
                f"{count} tasks writing different records concurrently must all succeed; "
                f"{len(failures)} failed, e.g. {failures[:3]}"
            )
        for gid in ids:
            await expect_record(
                storage,
                state,
                gid,
                f"{gid} v2".encode(),
                etags[gid],
                "concurrent writes to different records must all be stored",
            )


async def check_cancelled_write(open_storage: StorageOpener) -> None:
    """A cancelled write either happened or did not: the record stays consistent."""
    state, gid = new_state_and_grain()
    async with open_storage() as storage:
        old = b"v0"
        etag = await write_record(storage, state, gid, old, None)
        for delay in range(8):
            new = f"v{delay + 1}".encode()
            returned: str | None = None
            error: Exception | None = None
            with trio.CancelScope() as scope:

                async def cancel_later(scope: trio.CancelScope = scope, delay: int = delay) -> None:
                    for _ in range(delay):
                        await trio.lowlevel.checkpoint()
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_later)
                    try:
                        returned = await storage.write(state, gid, new, etag)
                    except Exception as exc:
                        error = exc
            if error is not None:
                raise AssertionError(
                    f"a write cancelled after {delay} checkpoints must return or raise "
                    f"trio.Cancelled; it raised {show_exc(error)}"
                ) from error
            if returned is not None:
                await expect_record(
                    storage, state, gid, new, returned, "a write that returned must be stored"
                )
            record = await read_record(storage, state, gid)
            if record is None or record.data not in (old, new):
                raise AssertionError(
                    "a cancelled write must either happen or not; the record then reads "
                    f"{show(record)}, expected data {old!r} or {new!r}"
                )
            if record.data == old and record.etag != etag:
                raise AssertionError(
                    "a cancelled write that did not happen must leave the etag as it was "
                    f"({etag!r}); it is {record.etag!r}"
                )
            old = f"after {delay}".encode()
            etag = await expect_success(
                "a write with the etag read after a cancelled write",
                partial(storage.write, state, gid, old, record.etag),
            )


async def check_durability(open_storage: StorageOpener) -> None:
    """Records and etags survive closing and reopening the provider."""
    state, gid = new_state_and_grain()
    cleared = GrainId.create(gid.type, "cleared")
    large = random.Random(99).randbytes(LARGE_STATE // 4)
    async with open_storage() as storage:
        etag = await write_record(storage, state, gid, b"v1", None)
        etag = await write_record(storage, state, gid, large, etag)
        gone = await write_record(storage, state, cleared, b"soon gone", None)
        await storage.clear(state, cleared, gone)
    async with open_storage() as storage:
        await expect_record(
            storage, state, gid, large, etag, "data and etag must survive closing and reopening"
        )
        await expect_missing(
            storage, state, cleared, "a cleared record must stay cleared after reopening"
        )
        await expect_conflict(
            "after reopening, write with etag None to an existing record",
            lambda: storage.write(state, gid, b"v3", None),
        )
        etag = await write_record(storage, state, gid, b"v3", etag)
    async with open_storage() as first, open_storage() as second:
        await expect_record(
            second, state, gid, b"v3", etag, "a write must be visible to another provider instance"
        )
        newer = await write_record(first, state, gid, b"v4", etag)
        await expect_conflict(
            "write with a stale etag through a second provider instance",
            lambda: second.write(state, gid, b"v5", etag),
        )
        await expect_record(
            second, state, gid, b"v4", newer, "a second provider instance must see the new record"
        )
        await second.clear(state, gid, newer)
