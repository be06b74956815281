"""Key-value buckets: create-if-absent, compare-and-set, delete, watch, per-key TTL."""

from __future__ import annotations

import uuid

import pytest
import trio
from trio_grains_nats import (
    JetStream,
    KeyDeletedError,
    KeyExistsError,
    NotFoundError,
    WrongLastSequenceError,
)


def _bucket() -> str:
    return "b" + uuid.uuid4().hex[:10]


async def test_put_get_delete(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket(), history=5)
    rev1 = await kv.put("greeting", b"hello")
    rev2 = await kv.put("greeting", b"hi")
    entry = await kv.get("greeting")
    assert (entry.value, entry.revision) == (b"hi", rev2)
    assert rev2 > rev1
    with pytest.raises(NotFoundError):
        await kv.get("missing")
    await kv.delete("greeting")
    with pytest.raises(KeyDeletedError):
        await kv.get("greeting")
    again = await js.key_value(kv.bucket)
    assert again.bucket == kv.bucket
    with pytest.raises(NotFoundError):
        await js.key_value("no" + _bucket())


async def test_create_if_absent_race_has_one_winner(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    winners: list[int] = []
    losers: list[int] = []

    async def register(i: int) -> None:
        try:
            await kv.create("grain/42", b"silo-%d" % i)
        except KeyExistsError:
            losers.append(i)
        else:
            winners.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(register, i)
    assert len(winners) == 1
    assert len(losers) == 9
    assert (await kv.get("grain/42".replace("/", "/"))).value == b"silo-%d" % winners[0]


async def test_create_after_delete_succeeds(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    await kv.create("k", b"1")
    await kv.delete("k")
    rev = await kv.create("k", b"2")
    assert (await kv.get("k")).revision == rev


async def test_update_with_stale_revision_fails(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    rev = await kv.create("k", b"v1")
    rev2 = await kv.update("k", b"v2", rev)
    with pytest.raises(WrongLastSequenceError):
        await kv.update("k", b"v3", rev)  # stale
    assert (await kv.get("k")).value == b"v2"
    assert (await kv.get("k")).revision == rev2


async def test_watch_sees_current_values_then_updates(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    await kv.put("a", b"1")
    with trio.fail_after(5):
        async with kv.watch() as watcher:
            first = await watcher.__anext__()
            assert (first.key, first.value, first.operation) == ("a", b"1", "PUT")
            await kv.put("b", b"2")
            await kv.delete("a")
            second = await watcher.__anext__()
            third = await watcher.__anext__()
    assert (second.key, second.value) == ("b", b"2")
    assert (third.key, third.operation) == ("a", "DEL")


async def test_per_key_ttl_expires(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    await kv.put("short", b"x", ttl=1.0)
    await kv.put("long", b"y", ttl=60)
    assert (await kv.get("short")).value == b"x"
    with trio.fail_after(2.5):
        while True:
            try:
                await kv.get("short")
            except NotFoundError:
                break
            await trio.sleep(0.1)
    assert (await kv.get("long")).value == b"y"
    with pytest.raises(ValueError, match="ttl"):
        await kv.put("bad", b"", ttl=0)
