"""The grain directory in a JetStream KV bucket, against a real nats-server."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import attrs
import pytest
import trio
from trio_grains_nats import JetStream, connect
from trio_grains_nats.directory import KvGrainDirectory, directory_bucket_name

from trio_grains import ConfigError, GrainId
from trio_grains._cluster.directory import (
    CachedDirectory,
    DirectoryEntry,
    GrainDirectory,
)

CART = GrainId.create("cart", "bob")


def _cluster() -> str:
    return "c" + uuid.uuid4().hex[:10]


async def _directory(js: JetStream) -> KvGrainDirectory:
    with trio.fail_after(10):
        return await KvGrainDirectory.open(js, _cluster())


def test_bucket_name() -> None:
    assert directory_bucket_name("prod_1-a") == "grains-directory-prod_1-a"
    for bad in ("", "a.b", "a b", "a*", "a>", "é"):
        with pytest.raises(ConfigError, match="cluster name"):
            directory_bucket_name(bad)


async def test_register_lookup_unregister(js: JetStream) -> None:
    directory = await _directory(js)
    assert directory.kv.bucket.startswith("grains-directory-c")
    with trio.fail_after(10):
        assert await directory.lookup(CART) is None
        assert await directory.entries() == []
        mine = DirectoryEntry.new(CART, "silo-1")
        stored = await directory.register(mine)
        assert stored == attrs.evolve(mine, revision=stored.revision)
        assert stored.revision is not None
        assert await directory.lookup(CART) == stored
        assert await directory.register(mine) == stored  # retrying is idempotent
        assert await directory.entries() == [stored]
        assert await directory.unregister(mine)
        assert await directory.lookup(CART) is None
        assert not await directory.unregister(mine)
        again = await directory.register(DirectoryEntry.new(CART, "silo-2"))
        assert again.silo_id == "silo-2"
        assert again.revision != stored.revision
        assert await directory.lookup(CART) == again


async def test_loser_gets_the_winner_and_stale_unregister_is_refused(js: JetStream) -> None:
    directory = await _directory(js)
    with trio.fail_after(10):
        first = await directory.register(DirectoryEntry.new(CART, "silo-1"))
        lost = await directory.register(DirectoryEntry.new(CART, "silo-2"))
        assert lost == first
        assert await directory.unregister(first)
        newer = await directory.register(DirectoryEntry.new(CART, "silo-1"))
        assert not await directory.unregister(first)  # a stale activation of the same silo
        assert not await directory.unregister(attrs.evolve(first, revision=newer.revision))
        assert await directory.lookup(CART) == newer


async def test_fifty_concurrent_registers_from_three_silos(nats_url: str) -> None:
    cluster = _cluster()
    results: list[DirectoryEntry] = []
    entries = [DirectoryEntry.new(CART, f"silo-{i % 3}") for i in range(50)]
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            silos: list[GrainDirectory] = []
            for i in range(3):
                nc = await stack.enter_async_context(connect(nats_url, name=f"silo-{i}"))
                silos.append(await KvGrainDirectory.open(nc.jetstream(), cluster))

            async def register(i: int) -> None:
                results.append(await silos[i % 3].register(entries[i]))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(register, i)
            assert len(results) == 50
            winner = results[0]
            assert all(result == winner for result in results)
            assert sum(winner.same_activation(entry) for entry in entries) == 1
            for silo in silos:
                assert await silo.lookup(CART) == winner


KEYS = [
    GrainId.create("cart", "bob"),
    GrainId.create("cart", 42),
    GrainId.create("cart", -1),
    GrainId.create("cart", uuid.UUID(int=7)),
    GrainId.create("cart", 42, "ext.with dots"),
    GrainId.create("cart", uuid.UUID(int=8), "ext"),
    GrainId.create("shop.v2", "a/b/c"),
    GrainId.create("cart", "dots.in.key"),
    GrainId.create("cart", "spaces in key"),
    GrainId.create("cart", "star*"),
    GrainId.create("cart", "gt>"),
    GrainId.create("cart", "*"),
    GrainId.create("cart", ">"),
    GrainId.create("cart", "%41 percent"),
    GrainId.create("cart", "ünïcödé 日本 🎉"),
    GrainId.create("dict`2", "default"),
]


async def test_every_key_kind_round_trips(js: JetStream) -> None:
    directory = await _directory(js)
    with trio.fail_after(20):
        stored = {}
        for grain in KEYS:
            entry = await directory.register(DirectoryEntry.new(grain, "silo-1"))
            assert entry.grain_id == grain
            stored[grain] = entry
        for grain in KEYS:
            assert await directory.lookup(grain) == stored[grain]
        listed = await directory.entries()
        assert sorted(listed, key=lambda e: e.grain_id) == sorted(
            stored.values(), key=lambda e: e.grain_id
        )
        for grain in KEYS:
            assert await directory.unregister(stored[grain])
            assert await directory.lookup(grain) is None


async def test_remove_silo_and_silos_not_in(js: JetStream) -> None:
    directory = await _directory(js)
    grains = [GrainId.create("cart", i) for i in range(30)]
    with trio.fail_after(20):
        assert await directory.remove_silo("silo-0") == 0  # an empty bucket
        for i, grain in enumerate(grains):
            await directory.register(DirectoryEntry.new(grain, f"silo-{i % 3}"))
        gone = await directory.register(DirectoryEntry.new(GrainId.create("x", "y"), "silo-0"))
        assert await directory.unregister(gone)  # a delete marker the scan must skip
        assert await directory.remove_silo("silo-0") == 10
        assert await directory.remove_silo("silo-0") == 0
        assert await directory.lookup(grains[0]) is None
        assert await directory.lookup(grains[1]) is not None
        assert await directory.remove_silos_not_in({"silo-1"}) == 10
        remaining = await directory.entries()
        assert sorted(e.grain_id for e in remaining) == sorted(grains[1::3])
        moved = await directory.register(DirectoryEntry.new(grains[0], "silo-1"))
        assert moved.silo_id == "silo-1"


async def test_cached_kv_directory(js: JetStream) -> None:
    directory = CachedDirectory(await _directory(js))
    with trio.fail_after(10):
        winner = await directory.register(DirectoryEntry.new(CART, "silo-1"))
        assert directory.cache.peek(CART) == winner
        assert await directory.lookup(CART) == winner
        assert directory.cache.statistics().hits == 1
        assert await directory.remove_silo("silo-1") == 1
        assert CART not in directory.cache
        assert await directory.lookup(CART) is None


async def test_an_unreadable_entry_is_skipped_counted_and_replaced(js: JetStream) -> None:
    directory = await _directory(js)
    with trio.fail_after(10):
        await directory.kv.put(CART.token, b"not json")
        assert await directory.lookup(CART) is None  # as if absent: the grain can activate
        assert await directory.entries() == []  # skipped by scans
        assert directory.malformed_rows == 1
        entry = DirectoryEntry.new(CART, "silo-1")
        assert (await directory.register(entry)).same_activation(entry)
