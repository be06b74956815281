"""JetStream: streams, consumers, publish with dedup, pipelined publish, fetch and acks."""

from __future__ import annotations

import uuid

import pytest
import trio
from trio_grains_nats import (
    JetStream,
    JetStreamError,
    JsMsgMetadata,
    NotFoundError,
    PublishItem,
    ack_all,
)


def _name() -> str:
    return "T" + uuid.uuid4().hex[:10].upper()


async def _stream(js: JetStream, **params: object) -> str:
    name = _name()
    await js.add_stream(name=name, subjects=[f"{name}.>"], **params)
    return name


async def test_stream_and_consumer_management(js: JetStream) -> None:
    name = await _stream(js)
    info = await js.stream_info(name)
    assert info.config.name == name
    assert info.state.messages == 0
    updated = await js.update_stream(name=name, subjects=[f"{name}.>"], max_msgs=100)
    assert updated.config.max_msgs == 100
    consumer = await js.add_consumer(name, durable_name="work", ack_policy="explicit")
    assert consumer.name == "work"
    assert (await js.consumer_info(name, "work")).stream_name == name
    await js.delete_consumer(name, "work")
    with pytest.raises(NotFoundError):
        await js.consumer_info(name, "work")
    await js.delete_stream(name)
    with pytest.raises(NotFoundError, match="stream not found"):
        await js.stream_info(name)


async def test_publish_without_stream_says_how_to_fix(js: JetStream) -> None:
    with pytest.raises(JetStreamError, match="add a stream"):
        await js.publish("nostream." + _name(), b"x")


async def test_publish_dedup_by_msg_id(js: JetStream) -> None:
    name = await _stream(js)
    first = await js.publish(f"{name}.a", b"order-1", msg_id="order-1")
    again = await js.publish(f"{name}.a", b"order-1", msg_id="order-1")
    assert (first.seq, bool(first.duplicate)) == (1, False)
    assert (again.seq, again.duplicate) == (1, True)
    assert (await js.stream_info(name)).state.messages == 1


async def test_publish_many_10000(js: JetStream) -> None:
    name = await _stream(js)
    acks = await js.publish_many((f"{name}.x", b"%d" % i) for i in range(10_000))
    assert [a.seq for a in acks] == list(range(1, 10_001))
    assert (await js.stream_info(name)).state.messages == 10_000
    dup = await js.publish_many(
        [PublishItem(f"{name}.y", b"a", msg_id="m1"), PublishItem(f"{name}.y", b"a", msg_id="m1")]
    )
    assert [a.duplicate for a in dup] == [None, True] or [a.duplicate for a in dup] == [
        False,
        True,
    ]


async def test_fetch_and_ack(js: JetStream) -> None:
    name = await _stream(js)
    await js.publish_many((f"{name}.x", b"%d" % i) for i in range(600))
    await js.add_consumer(name, durable_name="c", ack_policy="explicit")
    psub = await js.pull_subscribe(name, "c")
    got: list[bytes] = []
    while len(got) < 600:
        msgs = await psub.fetch(256, expires=1)
        assert msgs
        got += [m.data for m in msgs]
        await ack_all(msgs)
    assert got == [b"%d" % i for i in range(600)]
    meta = msgs[-1].metadata
    assert (meta.stream, meta.consumer, meta.stream_seq, meta.num_delivered) == (
        name,
        "c",
        600,
        1,
    )
    assert await psub.fetch(10, expires=0.2) == []  # nothing left: 408 after expiry
    await js._conn.flush()
    info = await js.consumer_info(name, "c")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_nak_with_delay_redelivers_and_term_does_not(js: JetStream) -> None:
    name = await _stream(js)
    await js.publish(f"{name}.x", b"retry-me")
    await js.publish(f"{name}.x", b"poison")
    await js.add_consumer(name, durable_name="c", ack_policy="explicit", ack_wait=30)
    psub = await js.pull_subscribe(name, "c")
    first, poison = await psub.fetch(2, expires=1)
    await first.nak(delay=0.2)
    await poison.term()
    with pytest.raises(ValueError, match="already acknowledged"):
        await poison.ack()
    with trio.fail_after(5):
        again = await psub.fetch(1, expires=2)
    assert [m.data for m in again] == [b"retry-me"]
    assert again[0].metadata.num_delivered == 2
    await again[0].in_progress()
    await again[0].ack_sync()
    assert await psub.fetch(1, expires=0.3) == []  # the terminated one never comes back


def test_metadata_from_reply_subjects() -> None:
    v1 = JsMsgMetadata.from_reply("$JS.ACK.ORDERS.work.2.17.5.1700000000000000000.3")
    assert (v1.stream, v1.consumer, v1.num_delivered, v1.stream_seq, v1.consumer_seq) == (
        "ORDERS",
        "work",
        2,
        17,
        5,
    )
    assert v1.num_pending == 3
    v2 = JsMsgMetadata.from_reply("$JS.ACK.hub.ACCHASH.ORDERS.work.1.9.8.1700000000000000000.0.tok")
    assert (v2.domain, v2.stream, v2.stream_seq) == ("hub", "ORDERS", 9)
    with pytest.raises(ValueError, match="not a JetStream ack subject"):
        JsMsgMetadata.from_reply("_INBOX.abc")
