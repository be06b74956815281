"""Key-value buckets: create-if-absent, compare-and-set, delete, watch, per-key TTL."""

from __future__ import annotations

import uuid

import pytest
import trio
from nats.js.api import DiscardPolicy, StreamConfig
from trio_grains_nats import (
    JetStream,
    KeyDeletedError,
    KeyExistsError,
    NotFoundError,
    WrongLastSequenceError,
)
from trio_grains_nats.client._exceptions import InvalidKeyError
from trio_grains_nats.client._kv import KeyValue


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


async def _same_through_leader(kv: KeyValue, key: str) -> None:
    """``get`` by direct get and through the stream leader agree (value or error)."""

    async def outcome(reader: KeyValue) -> object:
        try:
            return await reader.get(key)
        except NotFoundError as exc:
            return (type(exc), exc.code, getattr(exc, "revision", None))

    assert kv._direct
    assert await outcome(kv) == await outcome(KeyValue(kv._js, kv.bucket, direct=False))


async def test_get_uses_direct_get_on_one_replica(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket(), history=5)
    assert kv._direct  # allow_direct, one replica
    assert (await js.key_value(kv.bucket))._direct
    rev = await kv.put("a.b/c=d", b"\x00value\r\n")
    entry = await kv.get("a.b/c=d")
    assert (entry.bucket, entry.key, entry.value, entry.revision, entry.operation) == (
        kv.bucket,
        "a.b/c=d",
        b"\x00value\r\n",
        rev,
        "PUT",
    )
    await kv.put("empty", b"")
    assert (await kv.get("empty")).value == b""
    for key in ("a.b/c=d", "empty"):
        await _same_through_leader(kv, key)


async def test_get_of_a_deleted_key(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket(), history=5)
    await kv.put("k", b"v")
    rev = await kv.delete("k")
    with pytest.raises(KeyDeletedError) as info:
        await kv.get("k")
    assert (info.value.key, info.value.revision, info.value.code) == ("k", rev, 404)
    await _same_through_leader(kv, "k")


async def test_get_of_a_purged_key(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket(), history=5)
    await kv.put("k", b"v1")
    await kv.put("k", b"v2")
    ack = await js.publish(
        f"$KV.{kv.bucket}.k", b"", headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
    )
    with pytest.raises(KeyDeletedError) as info:
        await kv.get("k")
    assert info.value.revision == ack.seq
    await _same_through_leader(kv, "k")
    assert await kv.create("k", b"v3") > ack.seq  # a purged key can be created again


async def test_get_of_a_missing_key(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    await kv.put("other", b"x")
    for key in ("missing", "miss.ing", "other.deeper"):
        with pytest.raises(NotFoundError) as info:
            await kv.get(key)
        assert type(info.value) is NotFoundError
        assert info.value.code == 404
        await _same_through_leader(kv, key)


async def test_get_in_a_missing_bucket_is_not_found(js: JetStream) -> None:
    for direct in (True, False):
        kv = KeyValue(js, "no" + _bucket(), direct=direct)
        with pytest.raises(NotFoundError):
            await kv.get("k")


async def test_bucket_without_direct_get(js: JetStream) -> None:
    """A bucket whose stream does not allow direct gets (made by other code): ``get``
    reads through the stream leader; and if the stream stops answering direct gets, a
    direct ``KeyValue`` falls back to the leader."""
    bucket = _bucket()
    await js.add_stream(
        StreamConfig(
            name=f"KV_{bucket}",
            subjects=[f"$KV.{bucket}.>"],
            max_msgs_per_subject=5,
            discard=DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_direct=False,
        )
    )
    kv = await js.key_value(bucket)
    assert not kv._direct
    stale = KeyValue(js, bucket, direct=True)  # as if it changed after we opened it
    rev = await kv.put("k", b"v")
    for reader in (kv, stale):
        assert await reader.get("k") == (await kv.get("k"))
        assert (await reader.get("k")).revision == rev
        with pytest.raises(NotFoundError):
            await reader.get("missing")
    rev2 = await kv.update("k", b"v2", rev)
    deleted = await kv.delete("k", revision=rev2)
    for reader in (kv, stale):
        with pytest.raises(KeyDeletedError) as info:
            await reader.get("k")
        assert info.value.revision == deleted


async def test_write_errors_and_revisions(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket(), history=5)
    rev1 = await kv.create("k", b"1")
    with pytest.raises(KeyExistsError) as exists:
        await kv.create("k", b"again")
    assert (exists.value.code, exists.value.err_code) == (400, 10071)
    rev2 = await kv.update("k", b"2", rev1)
    rev3 = await kv.put("k", b"3")
    assert rev1 < rev2 < rev3
    with pytest.raises(WrongLastSequenceError) as wrong:
        await kv.update("k", b"4", rev2)
    assert type(wrong.value) is WrongLastSequenceError
    assert wrong.value.err_code == 10071
    with pytest.raises(WrongLastSequenceError):
        await kv.delete("k", revision=rev2)
    rev4 = await kv.delete("k", revision=rev3)
    assert rev4 > rev3
    with pytest.raises(KeyDeletedError):
        await kv.get("k")
    rev5 = await kv.create("k", b"5")  # after a delete
    assert (await kv.get("k")).revision == rev5
    info = await js.stream_info(f"KV_{kv.bucket}")
    assert info.state.last_seq == rev5


async def test_a_wildcard_key_reads_nothing_but_an_error(js: JetStream) -> None:
    """A key is a subject: ``get("victim.*")`` used to return another key's entry."""
    kv = await js.create_key_value(_bucket())
    await kv.put("victim.secret", b"theirs")
    for key in ("victim.*", "victim.>", ">", "*", "victim.se*", "a>"):
        with pytest.raises(InvalidKeyError, match="bad KV key"):
            await kv.get(key)
    with pytest.raises(InvalidKeyError, match="wildcards are for watch"):
        await kv.get("victim.*")
    # the explicit filter API finds it, and says which key it found
    entry = await kv.last_entry("victim.*")
    assert (entry.key, entry.value) == ("victim.secret", b"theirs")
    assert (await KeyValue(js, kv.bucket, direct=False).last_entry(">")).key == "victim.secret"


@pytest.mark.parametrize(
    "key",
    [
        "",
        ".a",
        "a.",
        "a..b",
        "a b",
        "a\tb",
        "a\r\nPUB x 1",
        "ключ",
        "a*",
        "a.>",
        "a:b",
        "a" * 4000,
    ],
)
async def test_bad_keys_are_refused_before_anything_is_sent(js: JetStream, key: str) -> None:
    kv = await js.create_key_value(_bucket())
    writes = (
        kv.put(key, b"x"),
        kv.create(key, b"x"),
        kv.update(key, b"x", 1),
        kv.delete(key),
        kv.get(key),
    )
    for write in writes:
        with pytest.raises(InvalidKeyError) as info:
            await write
        assert isinstance(info.value, ValueError)
        assert len(str(info.value)) < 300  # a long key is shortened in the message
    info_after = await js.stream_info(f"KV_{kv.bucket}")
    assert info_after.state.messages == 0


async def test_the_keys_the_providers_use_are_valid(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    for key in ("cart.cart/alice", "a-b_c/d=E9", "counter%2Falice@x", "=", "A.b.0"):
        rev = await kv.put(key, b"v")
        assert (await kv.get(key)).revision == rev
    longest = "k" * (2048 - len(f"$KV.{kv.bucket}."))
    with pytest.raises(InvalidKeyError, match="longer than 2048"):
        await kv.put(longest + "k", b"v")
    # the longest key works, also where a direct get's subject would be too long for it
    rev = await kv.put(longest, b"v")
    assert kv._direct
    assert not kv._get_in_subject(longest)
    assert (await kv.get(longest)).revision == rev
    assert (await KeyValue(js, kv.bucket, direct=False).get(longest)).revision == rev


async def test_watch_and_last_entry_take_filters_only(js: JetStream) -> None:
    kv = await js.create_key_value(_bucket())
    for bad in ("a.>.b", "a..*", "a b.*", ".>", "a*.b"):
        for call in (kv.last_entry(bad), kv.watch(bad).__aenter__()):
            with pytest.raises(InvalidKeyError, match="bad KV filter"):
                await call
    await kv.put("x.y", b"1")
    with trio.fail_after(5):
        async with kv.watch("x.*") as watcher:
            assert (await watcher.__anext__()).key == "x.y"
    with pytest.raises(NotFoundError):
        await kv.last_entry("nothing.>")


async def test_bucket_names_are_checked(js: JetStream) -> None:
    for bucket in ("a.b", "a*", ">", "", "a b"):
        with pytest.raises(ValueError, match="bucket name"):
            KeyValue(js, bucket)
