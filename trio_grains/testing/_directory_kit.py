"""The grain-directory conformance kit: every rule of :class:`~trio_grains.GrainDirectory`.

Register-if-absent with exactly one winner among any number of racers (all of them
returning the winner's entry), lookups, unregister only by the registered activation,
removing the entries of dead silos, grain ids of every key kind, directories of one cluster
sharing entries and other clusters invisible; and, for a directory that stores bytes, that
an entry that does not decode is skipped, counted and replaced.

Each check takes ``open_directory(cluster_id)``, a callable returning an async context
manager that yields a directory of that cluster (the same entries for the same id, every
time it is called), and raises :class:`AssertionError` naming the broken rule. Each check
uses cluster ids of its own (a random tag).

May import: every layer below, the ``trio_grains`` package and ``_kit_helpers``. Not the
silo or the client: a kit checks a provider on its own.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TypeAlias

import attrs
import trio

from .._cluster.directory import DirectoryEntry, GrainDirectory
from .._ids import GrainId
from ._kit_helpers import expect_success, new_tag, run_checks, sample_grain_ids, show

__all__ = [
    "DIRECTORY_CHECKS",
    "DirectoryCorrupter",
    "GrainDirectoryCheck",
    "GrainDirectoryOpener",
    "check_grain_directory",
]

GrainDirectoryOpener: TypeAlias = Callable[[str], AbstractAsyncContextManager[GrainDirectory]]
"""``open_directory(cluster_id)``: a directory of that cluster, same backend every time."""

GrainDirectoryCheck: TypeAlias = Callable[[GrainDirectoryOpener], Awaitable[None]]
"""One conformance check: ``await check(open_directory)``; AssertionError when it fails."""

DirectoryCorrupter: TypeAlias = Callable[[GrainDirectory, GrainId, bytes], Awaitable[object]]
"""``corrupt(directory, grain_id, data)``: store *data* as the grain's entry, bypassing the
directory (what a foreign writer of a shared backend can do)."""

RACERS = 30


def _cluster(tag: str, n: int = 0) -> str:
    return f"kit{tag}{n}"


def _grain(tag: str, key: str | int = "g") -> GrainId:
    return GrainId.create(f"kit{tag}", key)


async def _lookup(directory: GrainDirectory, grain_id: GrainId) -> DirectoryEntry | None:
    entry = await expect_success(f"lookup({grain_id})", lambda: directory.lookup(grain_id))
    if entry is not None and not isinstance(entry, DirectoryEntry):
        raise AssertionError(f"lookup must return a DirectoryEntry or None; got {show(entry)}")
    return entry


async def _register(directory: GrainDirectory, entry: DirectoryEntry) -> DirectoryEntry:
    stored = await expect_success(
        f"register of {entry.grain_id}", lambda: directory.register(entry)
    )
    if not isinstance(stored, DirectoryEntry) or stored.revision is None:
        raise AssertionError(
            f"register must return the stored DirectoryEntry, its revision set; got {show(stored)}"
        )
    return stored


async def _expect_entry(
    directory: GrainDirectory, grain_id: GrainId, expected: DirectoryEntry | None, rule: str
) -> None:
    found = await _lookup(directory, grain_id)
    if found != expected:
        raise AssertionError(
            f"{rule}; lookup({grain_id}) returned {show(found, 200)}, "
            f"expected {show(expected, 200)}"
        )


async def _expect_bool(rule: str, expected: bool, op: Callable[[], Awaitable[object]]) -> None:
    result = await expect_success(rule, op)
    if result is not expected:
        raise AssertionError(f"{rule} must return {expected}; got {show(result)}")


async def _expect_count(rule: str, expected: int, op: Callable[[], Awaitable[object]]) -> None:
    result = await expect_success(rule, op)
    if type(result) is not int or result != expected:
        raise AssertionError(
            f"{rule} must return {expected} (the number removed); got {show(result)}"
        )


# --- checks --------------------------------------------------------------------------------


async def check_lookup_missing(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    async with open_directory(_cluster(tag)) as directory:
        await _expect_entry(directory, _grain(tag), None, "a grain never registered has no entry")
        await _expect_bool(
            "unregister of a grain never registered",
            False,
            lambda: directory.unregister(DirectoryEntry.new(_grain(tag), "silo-1")),
        )


async def check_register_lookup_unregister(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    grain = _grain(tag)
    async with open_directory(_cluster(tag)) as directory:
        mine = DirectoryEntry.new(grain, "silo-1")
        stored = await _register(directory, mine)
        if stored != attrs.evolve(mine, revision=stored.revision):
            raise AssertionError(
                "register that wins must return the entry with its revision set; "
                f"got {show(stored, 200)}"
            )
        await _expect_entry(directory, grain, stored, "lookup returns the registered entry")
        again = await _register(directory, mine)
        if again != stored:
            raise AssertionError(
                "register of the same entry again must return the stored one (retrying is safe)"
            )
        await _expect_bool(
            "unregister of the registered activation", True, lambda: directory.unregister(mine)
        )
        await _expect_entry(directory, grain, None, "unregister removes the entry")
        await _expect_bool("a second unregister", False, lambda: directory.unregister(mine))
        newer = await _register(directory, DirectoryEntry.new(grain, "silo-2"))
        if newer.silo_id != "silo-2" or newer.revision == stored.revision:
            raise AssertionError(
                "a grain registered again must get the new entry, with another revision; "
                f"got {show(newer, 200)} after {show(stored, 200)}"
            )


async def check_concurrent_registers_one_winner(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    cluster = _cluster(tag)
    grain = _grain(tag)
    entries = [DirectoryEntry.new(grain, f"silo-{i % 3}") for i in range(RACERS)]
    results: list[DirectoryEntry | None] = [None] * RACERS
    async with open_directory(cluster) as one, open_directory(cluster) as two:
        directories = (one, two)

        async def register(i: int) -> None:
            results[i] = await directories[i % 2].register(entries[i])

        async def race() -> None:
            async with trio.open_nursery() as nursery:
                for i in range(RACERS):
                    nursery.start_soon(register, i)

        await expect_success("concurrent register", race)
        winner = results[0]
        if winner is None or any(r != winner for r in results):
            raise AssertionError(
                f"{RACERS} concurrent registers of one grain (two directories of one cluster) "
                f"must all return the one winner's entry; got {len(set(results))} different"
            )
        if sum(winner.same_activation(e) for e in entries) != 1:
            raise AssertionError("the winner's entry must be one of the racers' entries")
        for directory in directories:
            await _expect_entry(directory, grain, winner, "lookup returns the race's winner")


async def check_unregister_only_the_activation(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    grain = _grain(tag)
    async with open_directory(_cluster(tag)) as directory:
        first = await _register(directory, DirectoryEntry.new(grain, "silo-1"))
        lost = await _register(directory, DirectoryEntry.new(grain, "silo-2"))
        if lost != first:
            raise AssertionError("a register that loses must return the winner's entry")
        await _expect_bool(
            "unregister of an activation that lost the race",
            False,
            lambda: directory.unregister(DirectoryEntry.new(grain, "silo-2")),
        )
        await _expect_entry(directory, grain, first, "a loser's unregister removes nothing")
        await _expect_bool("unregister of the winner", True, lambda: directory.unregister(first))
        newer = await _register(directory, DirectoryEntry.new(grain, "silo-1"))
        await _expect_bool(
            "unregister of an older activation of the same grain and silo",
            False,
            lambda: directory.unregister(first),
        )
        await _expect_bool(
            "unregister of an older activation, given the newer revision (activation ids decide)",
            False,
            lambda: directory.unregister(attrs.evolve(first, revision=newer.revision)),
        )
        await _expect_entry(
            directory, grain, newer, "a stale unregister keeps the newer activation"
        )


async def check_remove_silo(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    grains = [_grain(tag, i) for i in range(12)]
    async with open_directory(_cluster(tag)) as directory:
        await _expect_count(
            "remove_silo of an empty directory", 0, lambda: directory.remove_silo("silo-0")
        )
        stored = [
            await _register(directory, DirectoryEntry.new(g, f"silo-{i % 3}"))
            for i, g in enumerate(grains)
        ]
        gone = await _register(directory, DirectoryEntry.new(_grain(tag, "gone"), "silo-0"))
        await _expect_bool("unregister", True, lambda: directory.unregister(gone))
        await _expect_count("remove_silo", 4, lambda: directory.remove_silo("silo-0"))
        await _expect_count("remove_silo again", 0, lambda: directory.remove_silo("silo-0"))
        for i, grain in enumerate(grains):
            expected = None if i % 3 == 0 else stored[i]
            await _expect_entry(
                directory, grain, expected, "remove_silo removes that silo's entries only"
            )
        moved = await _register(directory, DirectoryEntry.new(grains[0], "silo-1"))
        if moved.silo_id != "silo-1":
            raise AssertionError("a removed silo's grain must register again elsewhere")


async def check_remove_silos_not_in(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    grains = [_grain(tag, i) for i in range(12)]
    async with open_directory(_cluster(tag)) as directory:
        stored = [
            await _register(directory, DirectoryEntry.new(g, f"silo-{i % 3}"))
            for i, g in enumerate(grains)
        ]
        await _expect_count(
            "remove_silos_not_in({'silo-1'})", 8, lambda: directory.remove_silos_not_in({"silo-1"})
        )
        await _expect_count(
            "remove_silos_not_in again", 0, lambda: directory.remove_silos_not_in({"silo-1"})
        )
        for i, grain in enumerate(grains):
            expected = stored[i] if i % 3 == 1 else None
            await _expect_entry(
                directory, grain, expected, "remove_silos_not_in keeps live silos' entries only"
            )


async def check_grain_id_key_kinds(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    grains = sample_grain_ids(tag)
    async with open_directory(_cluster(tag)) as directory:
        stored = {}
        for grain in grains:
            entry = await _register(directory, DirectoryEntry.new(grain, "silo-1"))
            if entry.grain_id != grain:
                raise AssertionError(
                    f"register of {grain!r} returned an entry of {entry.grain_id!r}"
                )
            stored[grain] = entry
        for grain in grains:
            await _expect_entry(directory, grain, stored[grain], "every grain id has its own entry")
        for entry in stored.values():
            if not await directory.unregister(entry):
                raise AssertionError(f"unregister of {entry.grain_id} must return True")


async def check_directories_share_entries(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    grain = _grain(tag)
    cluster = _cluster(tag)
    async with open_directory(cluster) as one, open_directory(cluster) as two:
        stored = await _register(one, DirectoryEntry.new(grain, "silo-1"))
        await _expect_entry(two, grain, stored, "directories of one cluster share entries")
        await _expect_bool(
            "unregister through another directory", True, lambda: two.unregister(stored)
        )
        await _expect_entry(
            one, grain, None, "an unregister is seen by every directory of the cluster"
        )


async def check_other_clusters_invisible(open_directory: GrainDirectoryOpener) -> None:
    tag = new_tag()
    grain = _grain(tag)
    async with open_directory(_cluster(tag, 1)) as mine, open_directory(_cluster(tag, 2)) as other:
        stored = await _register(mine, DirectoryEntry.new(grain, "silo-1"))
        await _expect_entry(
            other, grain, None, "a directory must not see another cluster's entries"
        )
        theirs = await _register(other, DirectoryEntry.new(grain, "silo-2"))
        if theirs.silo_id != "silo-2":
            raise AssertionError("a register in another cluster must not meet this cluster's entry")
        await _expect_count(
            "remove_silo in another cluster", 0, lambda: other.remove_silo("silo-1")
        )
        await _expect_entry(mine, grain, stored, "another cluster's writes change nothing here")


async def check_malformed_entries(
    open_directory: GrainDirectoryOpener, corrupt: DirectoryCorrupter
) -> None:
    """An entry that does not decode is no entry: skipped, counted, replaced by register."""
    tag = new_tag()
    grain, other = _grain(tag, "bad"), _grain(tag, "bad2")
    async with open_directory(_cluster(tag)) as directory:
        before = getattr(directory, "malformed_rows", None)
        await corrupt(directory, grain, b"\xff\xfe not json")
        await corrupt(directory, other, b"[" * 1000)
        await _expect_entry(directory, grain, None, "an entry that does not decode is no entry")
        await _expect_entry(directory, grain, None, "an entry that does not decode is no entry")
        await _expect_bool(
            "unregister over an entry that does not decode",
            False,
            lambda: directory.unregister(DirectoryEntry.new(grain, "silo-1")),
        )
        await _expect_count(
            "remove_silo (skipping entries that do not decode)",
            0,
            lambda: directory.remove_silo("silo-1"),
        )
        if before is not None:
            counted = directory.malformed_rows - before  # type: ignore[attr-defined]
            if counted != 2:
                raise AssertionError(
                    "each entry that does not decode must be counted once in malformed_rows, "
                    f"however often it is read; counted {counted} for 2"
                )
        mine = DirectoryEntry.new(grain, "silo-1")
        stored = await _register(directory, mine)
        if not stored.same_activation(mine):
            raise AssertionError("register must replace an entry that does not decode")


DIRECTORY_CHECKS: Mapping[str, GrainDirectoryCheck] = types.MappingProxyType(
    {
        "lookup_missing": check_lookup_missing,
        "register_lookup_unregister": check_register_lookup_unregister,
        "concurrent_registers_one_winner": check_concurrent_registers_one_winner,
        "unregister_only_the_activation": check_unregister_only_the_activation,
        "remove_silo": check_remove_silo,
        "remove_silos_not_in": check_remove_silos_not_in,
        "grain_id_key_kinds": check_grain_id_key_kinds,
        "directories_share_entries": check_directories_share_entries,
        "other_clusters_invisible": check_other_clusters_invisible,
    }
)
"""Every grain-directory check by name, in the order :func:`check_grain_directory` runs
them (``malformed_entries`` follows when a *corrupt* callable is given)."""


async def check_grain_directory(
    open_directory: GrainDirectoryOpener, *, corrupt: DirectoryCorrupter | None = None
) -> None:
    """Check that a grain directory keeps every rule of :class:`~trio_grains.GrainDirectory`.

    *open_directory(cluster_id)* is called several times and must return an async context
    manager yielding a directory of that cluster on the **same** backend each time (the kit
    opens two directories of one cluster at once, and directories of two clusters).
    Cluster ids are ``kit<random tag><n>``: letters and digits.

    *corrupt(directory, grain_id, data)*, for a directory that stores entries as bytes,
    writes *data* as the grain's entry behind the directory's back; the kit then checks
    that such an entry is skipped (and counted in ``malformed_rows`` if the directory has
    that attribute) and replaced by a register.

    Raises :class:`AssertionError` naming the first rule broken. Each check is also
    available alone in :data:`DIRECTORY_CHECKS`.
    """
    await run_checks("grain directory", DIRECTORY_CHECKS, frozenset(), open_directory, True)
    if corrupt is not None:
        try:
            await check_malformed_entries(open_directory, corrupt)
        except AssertionError as exc:
            exc.add_note("(trio_grains.testing grain directory check 'malformed_entries')")
            raise
