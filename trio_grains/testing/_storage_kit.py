"""The grain-storage conformance kit: every rule of :class:`~trio_grains.GrainStorage`.

Each check takes ``open_storage``, a callable returning an async context manager that
yields a provider on the same backend every time, and raises :class:`AssertionError`
naming the broken rule. Checks use a fresh grain type and state name of their own (a
random tag), so a backend holding data from earlier runs does not disturb them.
"""

from __future__ import annotations

import random
import types
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, TypeAlias, TypeVar

import trio

from .._ids import GrainId, GrainType
from .._storage import GrainStorage, InconsistentStateError, StoredState

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

LARGE_STATE = 4 * 1024 * 1024

T = TypeVar("T")


# --- helpers shared with the reminder kit ------------------------------------------------


def new_tag() -> str:
    """A random tag making a check's grain types and names its own."""
    return uuid.uuid4().hex[:12]


def sample_grain_ids(tag: str) -> list[GrainId]:
    """Grain ids of every key kind, under grain types unique to *tag*; all distinct."""
    kit = GrainType(f"kit{tag}")
    other = GrainType(f"kit{tag}other")
    generic = GrainType(f"kit{tag}`2")
    str_keys = [
        "plain",
        "Plain",  # differs only in case
        "plain ",  # trailing space
        " plain",
        "with spaces in it",
        "a/b/c",  # ids are parsed at the first '/'
        "/",
        "it's",
        'say "hi"',
        "back\\slash",
        "100%",
        "%41%2F",  # looks like an escaped token
        "a+b",
        "semi;colon -- and 'quotes'",
        "unicode ünïcødé 日本語 Ελληνικά",
        "caf\u00e9",  # NFC
        "cafe\u0301",  # NFD: a different key
        "emoji 🍕🧑‍🚀",
        "x" * 300,
        "default",
    ]
    ids = [GrainId.create(kit, key) for key in str_keys]
    ids += [GrainId.create(kit, n) for n in (0, 1, 42, -1, 2**63 - 1, -(2**63))]
    ids += [
        GrainId.create(kit, uuid.UUID(int=0)),
        GrainId.create(kit, uuid.UUID("6f1e4c1a-7b7e-4d8e-9a51-2f3c4d5e6f70")),
        GrainId.create(kit, 7, "eu"),
        GrainId.create(kit, 7, "EU"),
        GrainId.create(kit, -7, "ext/with 'odd' chars 🍕"),
        GrainId.create(kit, uuid.UUID(int=1), "ext"),
        GrainId.create(generic, "plain"),
        GrainId.create(generic, 42),
        GrainId.create(other, "plain"),
    ]
    assert len(set(ids)) == len(ids), "trio_grains.testing bug: sample grain ids collide"
    return ids


def show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def show_exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {show(str(exc), 200)}"


async def expect_conflict(rule: str, op: Callable[[], Awaitable[Any]]) -> None:
    """*rule* must raise InconsistentStateError."""
    try:
        result = await op()
    except InconsistentStateError:
        return
    except Exception as exc:
        raise AssertionError(
            f"{rule} must raise InconsistentStateError; it raised {show_exc(exc)}"
        ) from exc
    raise AssertionError(f"{rule} must raise InconsistentStateError; it returned {show(result)}")


async def expect_success(rule: str, op: Callable[[], Awaitable[T]]) -> T:
    """*rule* must succeed; return what it returned."""
    try:
        return await op()
    except Exception as exc:
        raise AssertionError(f"{rule} must succeed; it raised {show_exc(exc)}") from exc


# --- storage helpers ---------------------------------------------------------------------


async def _read(storage: GrainStorage, state: str, gid: GrainId) -> StoredState | None:
    record = await expect_success(
        f"read of state {state!r} of {gid}", lambda: storage.read(state, gid)
    )
    if record is not None:
        if not isinstance(record, StoredState):
            raise AssertionError(
                f"read must return a StoredState or None; it returned {show(record)}"
            )
        if not isinstance(record.data, bytes):
            raise AssertionError(
                f"read must return StoredState.data as bytes; it is a {type(record.data).__name__}"
            )
        if not isinstance(record.etag, str):
            raise AssertionError(
                f"read must return StoredState.etag as a str; it is {show(record.etag)}"
            )
    return record


async def _write(
    storage: GrainStorage, state: str, gid: GrainId, data: bytes, etag: str | None
) -> str:
    new = await expect_success(
        f"write of state {state!r} of {gid} with the current etag {etag!r}",
        lambda: storage.write(state, gid, data, etag),
    )
    if not isinstance(new, str):
        raise AssertionError(f"write must return the new etag as a str; it returned {show(new)}")
    return new


async def _expect_record(
    storage: GrainStorage, state: str, gid: GrainId, data: bytes, etag: str, rule: str
) -> None:
    record = await _read(storage, state, gid)
    if record is None:
        raise AssertionError(f"{rule}; the record of state {state!r} of {gid} is missing")
    if record.data != data:
        raise AssertionError(
            f"{rule}; state {state!r} of {gid} reads back {show(record.data)}, "
            f"expected {show(data)}"
        )
    if record.etag != etag:
        raise AssertionError(
            f"{rule}; state {state!r} of {gid} reads back etag {record.etag!r}, expected {etag!r}"
        )


async def _expect_missing(storage: GrainStorage, state: str, gid: GrainId, rule: str) -> None:
    record = await _read(storage, state, gid)
    if record is not None:
        raise AssertionError(
            f"{rule}; state {state!r} of {gid} reads {show(record)}, expected None"
        )


def _setup(tag: str | None = None) -> tuple[str, GrainId]:
    tag = tag or new_tag()
    return f"kit-{tag}", GrainId.create(f"kit{tag}", "grain")


# --- the checks --------------------------------------------------------------------------


async def check_missing_record_reads_none(open_storage: StorageOpener) -> None:
    """A record that was never written reads as None."""
    state, gid = _setup()
    async with open_storage() as storage:
        await _expect_missing(storage, state, gid, "a record never written must read as None")


async def check_round_trip(open_storage: StorageOpener) -> None:
    """Written bytes read back exactly, with the etag write returned."""
    state, _ = _setup()
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
            etag = await _write(storage, state, gid, data, None)
            await _expect_record(
                storage, state, gid, data, etag, f"write then read must round-trip {label} bytes"
            )


async def check_etag_changes_on_every_write(open_storage: StorageOpener) -> None:
    """Every write, even of the same bytes, gives a new etag."""
    state, gid = _setup()
    async with open_storage() as storage:
        seen: list[str] = []
        etag: str | None = None
        for data in (b"same", b"same", b"same", b"other", b"same"):
            etag = await _write(storage, state, gid, data, etag)
            if etag in seen:
                raise AssertionError(
                    f"the etag must change on every write; write #{len(seen) + 1} returned "
                    f"{etag!r} again (etags so far: {seen})"
                )
            seen.append(etag)
            await _expect_record(
                storage, state, gid, data, etag, "read must return the etag the last write returned"
            )


async def check_stale_etag_write_conflicts(open_storage: StorageOpener) -> None:
    """A write with an older etag raises InconsistentStateError and changes nothing."""
    state, gid = _setup()
    async with open_storage() as storage:
        first = await _write(storage, state, gid, b"v1", None)
        second = await _write(storage, state, gid, b"v2", first)
        await expect_conflict(
            "write with a stale etag", lambda: storage.write(state, gid, b"v3", first)
        )
        await _expect_record(
            storage, state, gid, b"v2", second, "a write with a stale etag must change nothing"
        )
        await expect_conflict(
            "write with an etag the provider never issued",
            lambda: storage.write(state, gid, b"v3", f"bogus-{second}"),
        )
        await _expect_record(
            storage, state, gid, b"v2", second, "a write with a wrong etag must change nothing"
        )


async def check_none_etag_against_existing_record_conflicts(open_storage: StorageOpener) -> None:
    """etag None means "I expect no record": against an existing record it conflicts."""
    state, gid = _setup()
    async with open_storage() as storage:
        etag = await _write(storage, state, gid, b"v1", None)
        await expect_conflict(
            "write with etag None to an existing record",
            lambda: storage.write(state, gid, b"v2", None),
        )
        await _expect_record(
            storage, state, gid, b"v1", etag, "a write with etag None must not overwrite a record"
        )


async def check_etag_against_missing_record_conflicts(open_storage: StorageOpener) -> None:
    """A write or clear with an etag, to a record that does not exist, conflicts."""
    state, gid = _setup()
    async with open_storage() as storage:
        await expect_conflict(
            "write with an etag to a missing record",
            lambda: storage.write(state, gid, b"v1", "1"),
        )
        await _expect_missing(
            storage, state, gid, "a write with an etag to a missing record must create nothing"
        )
        await expect_conflict(
            "clear with an etag of a missing record", lambda: storage.clear(state, gid, "1")
        )


async def check_clear(open_storage: StorageOpener) -> None:
    """Clear with the current etag deletes; the record can then be created again."""
    state, gid = _setup()
    async with open_storage() as storage:
        etag = await _write(storage, state, gid, b"v1", None)
        await expect_success("clear with the current etag", lambda: storage.clear(state, gid, etag))
        await _expect_missing(storage, state, gid, "clear with the current etag must delete")
        await expect_conflict(
            "write with the etag of a cleared record",
            lambda: storage.write(state, gid, b"v2", etag),
        )
        again = await _write(storage, state, gid, b"v3", None)
        await _expect_record(
            storage, state, gid, b"v3", again, "a cleared record must be writable with etag None"
        )


async def check_stale_etag_clear_conflicts(open_storage: StorageOpener) -> None:
    """Clear with a stale etag (or None) raises InconsistentStateError; the record stays."""
    state, gid = _setup()
    async with open_storage() as storage:
        first = await _write(storage, state, gid, b"v1", None)
        second = await _write(storage, state, gid, b"v2", first)
        await expect_conflict("clear with a stale etag", lambda: storage.clear(state, gid, first))
        await _expect_record(
            storage, state, gid, b"v2", second, "a clear with a stale etag must keep the record"
        )
        await expect_conflict(
            "clear with etag None of an existing record", lambda: storage.clear(state, gid, None)
        )
        await _expect_record(
            storage, state, gid, b"v2", second, "a clear with etag None must keep the record"
        )


async def check_clear_missing_record(open_storage: StorageOpener) -> None:
    """Clearing a record that does not exist with etag None succeeds (and creates nothing)."""
    state, gid = _setup()
    async with open_storage() as storage:
        await expect_success(
            "clear of a missing record with etag None", lambda: storage.clear(state, gid, None)
        )
        await expect_success(
            "a second clear of a missing record with etag None",
            lambda: storage.clear(state, gid, None),
        )
        await _expect_missing(storage, state, gid, "clear of a missing record must create nothing")
        await _write(storage, state, gid, b"v1", None)


async def check_state_names_are_independent(open_storage: StorageOpener) -> None:
    """Two state names of one grain are two records (names are case-sensitive)."""
    tag = new_tag()
    _, gid = _setup(tag)
    names = [f"kit-{tag}", f"KIT-{tag}", f"kit-{tag}.v2", f"kit-{tag}_b", f"kit-{tag}-c"]
    async with open_storage() as storage:
        etags = {}
        for name in names:
            etags[name] = await _write(storage, name, gid, name.encode(), None)
        for name in names:
            await _expect_record(
                storage,
                name,
                gid,
                name.encode(),
                etags[name],
                "records of different state names of one grain must be independent",
            )
        await storage.clear(names[0], gid, etags.pop(names[0]))
        await _expect_missing(storage, names[0], gid, "clear must delete only its state name")
        for name, etag in etags.items():
            await _expect_record(
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
            await _expect_record(
                storage,
                state,
                gid,
                f"data of {gid}".encode(),
                etags[gid],
                "every grain id must be a record of its own (ids differing only in case, "
                "spacing, Unicode normalization, key kind or type are different grains)",
            )
        for gid in ids:
            etags[gid] = await _write(storage, state, gid, f"v2 {gid}".encode(), etags[gid])
        for gid in ids:
            await expect_success(f"clear of {gid}", partial(storage.clear, state, gid, etags[gid]))
            await _expect_missing(storage, state, gid, f"clear must delete the record of {gid}")


async def check_large_state(open_storage: StorageOpener) -> None:
    """A 4 MiB record round-trips and can be overwritten."""
    state, gid = _setup()
    rng = random.Random(1234)
    big = rng.randbytes(LARGE_STATE)
    async with open_storage() as storage:
        etag = await _write(storage, state, gid, big, None)
        await _expect_record(
            storage, state, gid, big, etag, "a 4 MiB state must round-trip byte for byte"
        )
        bigger = big[::-1]
        etag = await _write(storage, state, gid, bigger, etag)
        await _expect_record(
            storage, state, gid, bigger, etag, "a 4 MiB state must be overwritable"
        )
        await expect_success("clear of a 4 MiB state", partial(storage.clear, state, gid, etag))


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
    state, gid = _setup()
    writers = 20
    async with open_storage() as storage:
        for start in ("no record", "an existing record"):
            expected = (
                None if start == "no record" else await _write(storage, state, gid, b"", None)
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
            await _expect_record(
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
            await _expect_record(
                storage,
                state,
                gid,
                f"{gid} v2".encode(),
                etags[gid],
                "concurrent writes to different records must all be stored",
            )


async def check_cancelled_write(open_storage: StorageOpener) -> None:
    """A cancelled write either happened or did not: the record stays consistent."""
    state, gid = _setup()
    async with open_storage() as storage:
        old = b"v0"
        etag = await _write(storage, state, gid, old, None)
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
                await _expect_record(
                    storage, state, gid, new, returned, "a write that returned must be stored"
                )
            record = await _read(storage, state, gid)
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
    state, gid = _setup()
    cleared = GrainId.create(gid.type, "cleared")
    large = random.Random(99).randbytes(LARGE_STATE // 4)
    async with open_storage() as storage:
        etag = await _write(storage, state, gid, b"v1", None)
        etag = await _write(storage, state, gid, large, etag)
        gone = await _write(storage, state, cleared, b"soon gone", None)
        await storage.clear(state, cleared, gone)
    async with open_storage() as storage:
        await _expect_record(
            storage, state, gid, large, etag, "data and etag must survive closing and reopening"
        )
        await _expect_missing(
            storage, state, cleared, "a cleared record must stay cleared after reopening"
        )
        await expect_conflict(
            "after reopening, write with etag None to an existing record",
            lambda: storage.write(state, gid, b"v3", None),
        )
        etag = await _write(storage, state, gid, b"v3", etag)
    async with open_storage() as first, open_storage() as second:
        await _expect_record(
            second, state, gid, b"v3", etag, "a write must be visible to another provider instance"
        )
        newer = await _write(first, state, gid, b"v4", etag)
        await expect_conflict(
            "write with a stale etag through a second provider instance",
            lambda: second.write(state, gid, b"v5", etag),
        )
        await _expect_record(
            second, state, gid, b"v4", newer, "a second provider instance must see the new record"
        )
        await second.clear(state, gid, newer)


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


async def run_checks(
    kind: str,
    checks: Mapping[str, Callable[[Any], Awaitable[None]]],
    durability: frozenset[str],
    opener: Any,
    durable: bool,
) -> None:
    for name, check in checks.items():
        if not durable and name in durability:
            continue
        try:
            await check(opener)
        except AssertionError as exc:
            exc.add_note(f"(trio_grains.testing {kind} check {name!r})")
            raise


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
