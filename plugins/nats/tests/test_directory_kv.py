"""The grain directory in a JetStream KV bucket, against a real nats-server: the
conformance kit (each directory on a connection of its own), and what is specific to KV
(bucket names, keys as subject tokens, listing entries, the cache over it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from trio_grains_nats import JetStream, connect
from trio_grains_nats.directory import KvGrainDirectory, directory_bucket_name

from trio_grains import ConfigError, GrainId
from trio_grains._cluster.directory import CachedDirectory, DirectoryEntry, GrainDirectory
from trio_grains.testing import check_grain_directory

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


async def test_kv_directory_conforms(nats_url: str) -> None:
    @asynccontextmanager
    async def open_directory(cluster: str) -> AsyncIterator[GrainDirectory]:
        async with connect(nats_url, name="kit") as nc:
            with trio.fail_after(10):
                directory = await KvGrainDirectory.open(nc.jetstream(), cluster)
            yield directory

    async def corrupt(directory: GrainDirectory, grain_id: GrainId, data: bytes) -> None:
        assert isinstance(directory, KvGrainDirectory)
        await directory.kv.put(grain_id.token, data)

    with trio.fail_after(120):
        await check_grain_directory(open_directory, corrupt=corrupt)


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
