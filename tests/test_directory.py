"""The grain directory: the in-memory one (the conformance kit), entry values, and the
per-silo lookup cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest

from trio_grains import GrainId
from trio_grains._cluster.directory import (
    CachedDirectory,
    DirectoryCache,
    DirectoryEntry,
    GrainDirectory,
    MemoryGrainDirectory,
    new_activation_id,
)
from trio_grains.testing import check_grain_directory

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


async def test_memory_directory_conforms() -> None:
    directories: dict[str, MemoryGrainDirectory] = {}

    @asynccontextmanager
    async def open_directory(cluster: str) -> AsyncIterator[GrainDirectory]:
        yield directories.setdefault(cluster, MemoryGrainDirectory())

    await check_grain_directory(open_directory)


class LastWriterWins(MemoryGrainDirectory):
    """A directory that breaks single activation, to see the kit name the rule."""

    async def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        await self.unregister(await self.lookup(entry.grain_id) or entry)
        return await super().register(entry)


async def test_the_kit_names_the_broken_rule() -> None:
    @asynccontextmanager
    async def open_directory(cluster: str) -> AsyncIterator[GrainDirectory]:
        yield LastWriterWins()

    with pytest.raises(AssertionError, match="must return the stored one") as info:
        await check_grain_directory(open_directory)
    assert "register_lookup_unregister" in str(info.value.__notes__)


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
