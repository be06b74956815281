"""The grain directory contract (in memory) and the per-silo lookup cache."""

from __future__ import annotations

import attrs
import pytest
import trio

from trio_grains import GrainId
from trio_grains._cluster.directory import (
    CachedDirectory,
    DirectoryCache,
    DirectoryEntry,
    GrainDirectory,
    MemoryGrainDirectory,
    new_activation_id,
)

CART = GrainId.create("cart", "bob")
OTHER = GrainId.create("cart", "alice")


def test_entry_values() -> None:
    a = DirectoryEntry.new(CART, "silo-1")
    b = DirectoryEntry.new(CART, "silo-1")
    assert a.revision is None
    assert a.activation_id != b.activation_id
    assert len(new_activation_id()) == 32
    assert a.same_activation(attrs.evolve(a, revision=7))
    assert not a.same_activation(b)
    with pytest.raises(ValueError, match="silo_id"):
        DirectoryEntry(CART, "", "x")
    with pytest.raises(ValueError, match="activation_id"):
        DirectoryEntry(CART, "silo-1", "")


async def test_register_lookup_unregister() -> None:
    directory = MemoryGrainDirectory()
    assert await directory.lookup(CART) is None
    mine = DirectoryEntry.new(CART, "silo-1")
    stored = await directory.register(mine)
    assert stored.same_activation(mine)
    assert stored.revision is not None
    assert await directory.lookup(CART) == stored
    assert await directory.register(mine) == stored  # retrying is idempotent
    assert await directory.unregister(mine)
    assert await directory.lookup(CART) is None
    assert not await directory.unregister(mine)
    again = await directory.register(DirectoryEntry.new(CART, "silo-2"))
    assert again.revision != stored.revision


async def test_the_loser_gets_the_winners_entry() -> None:
    directory = MemoryGrainDirectory()
    results: list[DirectoryEntry] = []
    entries = [DirectoryEntry.new(CART, f"silo-{i % 3}") for i in range(50)]

    async def register(entry: DirectoryEntry) -> None:
        results.append(await directory.register(entry))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for entry in entries:
                nursery.start_soon(register, entry)
    assert len(results) == 50
    assert len(set(results)) == 1
    winner = results[0]
    assert sum(winner.same_activation(e) for e in entries) == 1
    assert await directory.lookup(CART) == winner


async def test_stale_unregister_keeps_the_newer_activation() -> None:
    directory = MemoryGrainDirectory()
    old = await directory.register(DirectoryEntry.new(CART, "silo-1"))
    assert await directory.unregister(old)
    new = await directory.register(DirectoryEntry.new(CART, "silo-1"))  # same silo, new one
    assert not await directory.unregister(old)
    assert await directory.lookup(CART) == new
    # the revision is ignored: only the activation id decides
    assert not await directory.unregister(attrs.evolve(old, revision=new.revision))
    assert await directory.lookup(CART) == new


async def test_remove_silo_and_silos_not_in() -> None:
    directory = MemoryGrainDirectory()
    grains = [GrainId.create("cart", i) for i in range(30)]
    for i, grain in enumerate(grains):
        await directory.register(DirectoryEntry.new(grain, f"silo-{i % 3}"))
    assert await directory.remove_silo("silo-0") == 10
    assert await directory.remove_silo("silo-0") == 0
    assert await directory.lookup(grains[0]) is None
    assert (await directory.lookup(grains[1])) is not None
    assert await directory.remove_silos_not_in({"silo-1"}) == 10
    assert len(directory) == 10
    assert [await directory.lookup(g) for g in grains[2::3]] == [None] * 10
    # the grain of a dead silo can be activated elsewhere
    moved = await directory.register(DirectoryEntry.new(grains[0], "silo-1"))
    assert moved.silo_id == "silo-1"


def test_cache_hits_bound_and_invalidation() -> None:
    cache = DirectoryCache(max_size=3)
    entries = [DirectoryEntry.new(GrainId.create("cart", i), f"silo-{i % 2}") for i in range(4)]
    for entry in entries[:3]:
        cache.put(entry)
    assert cache.get(entries[0].grain_id) == entries[0]  # now the most recently used
    cache.put(entries[3])  # evicts entries[1], the least recently used
    assert entries[1].grain_id not in cache
    assert len(cache) == 3
    assert cache.get(entries[1].grain_id) is None
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.evictions, stats.size) == (1, 1, 1, 3)
    assert cache.invalidate(entries[0].grain_id)
    assert not cache.invalidate(entries[0].grain_id)
    assert cache.invalidate_silo("silo-0") == 1  # entries[2]; entries[0] already gone
    assert cache.invalidate_silo("silo-0") == 0
    assert [e.grain_id in cache for e in entries] == [False, False, False, True]
    cache.put(attrs.evolve(entries[3], silo_id="silo-0"))  # replacing moves it between silos
    assert cache.invalidate_silo("silo-1") == 0
    assert cache.invalidate_silos_not_in({"silo-1"}) == 1
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_size"):
        DirectoryCache(max_size=0)


class CountingDirectory(MemoryGrainDirectory):
    lookups = 0

    async def lookup(self, grain_id: GrainId) -> DirectoryEntry | None:
        self.lookups += 1
        return await super().lookup(grain_id)


async def test_cached_directory_serves_lookups_from_the_cache() -> None:
    inner = CountingDirectory()
    silo1 = CachedDirectory(inner)
    silo2 = CachedDirectory(inner)
    assert isinstance(silo1, GrainDirectory)
    winner = await silo1.register(DirectoryEntry.new(CART, "silo-1"))
    assert await silo1.lookup(CART) == winner
    assert inner.lookups == 0  # register filled the cache
    assert await silo2.lookup(CART) == winner
    assert await silo2.lookup(CART) == winner
    assert inner.lookups == 1
    assert await silo2.lookup(CART, cached=False) == winner
    assert inner.lookups == 2
    assert await silo2.lookup(OTHER) is None
    assert await silo2.lookup(OTHER) is None  # misses are not cached
    assert inner.lookups == 4
    # a loser's register caches the winner
    lost = await silo2.register(DirectoryEntry.new(CART, "silo-2"))
    assert lost == winner
    assert silo2.cache.peek(CART) == winner


async def test_cached_directory_unregister_and_remove_silo_invalidate() -> None:
    inner = MemoryGrainDirectory()
    silo1 = CachedDirectory(inner, DirectoryCache(max_size=10))
    silo2 = CachedDirectory(inner)
    first = await silo1.register(DirectoryEntry.new(CART, "silo-1"))
    await silo1.register(DirectoryEntry.new(OTHER, "silo-2"))
    assert await silo1.unregister(first)
    assert CART not in silo1.cache
    assert await silo1.lookup(CART) is None
    # a stale unregister does not drop the cached newer activation
    second = await silo1.register(DirectoryEntry.new(CART, "silo-1"))
    assert not await silo1.unregister(first)
    assert silo1.cache.peek(CART) == second
    # remove_silo on one silo's view invalidates its cache for that silo
    assert await silo2.lookup(OTHER) is not None
    assert await silo2.remove_silo("silo-2") == 1
    assert OTHER not in silo2.cache
    assert await silo2.lookup(OTHER) is None
    # another silo's cache is stale until invalidated (what the runtime does on membership)
    assert silo1.cache.peek(OTHER) is not None
    assert silo1.cache.invalidate_silo("silo-2") == 1
    assert await silo1.lookup(OTHER) is None
    assert await silo1.remove_silos_not_in({"silo-2"}) == 1
    assert len(silo1.cache) == 0
    assert await inner.lookup(CART) is None
