"""Core NATS: publish/subscribe, queue groups, request/reply, flush, drain, backpressure."""

from __future__ import annotations

import pytest
import trio
from trio_grains_nats import (
    Connection,
    ConnectionClosedError,
    LateReply,
    Msg,
    NatsConnectionError,
    NoRespondersError,
    connect,
)


async def test_publish_subscribe_with_headers(nc: Connection) -> None:
    sub = await nc.subscribe("core.hdr.*")
    await nc.publish("core.hdr.a", b"plain")
    await nc.publish("core.hdr.b", b"with", headers={"X-Order": "42", "Trace": "a b"})
    first = await sub.next_msg()
    second = await sub.next_msg()
    assert (first.subject, first.data, first.headers) == ("core.hdr.a", b"plain", None)
    assert second.subject == "core.hdr.b"
    assert second.data == b"with"
    assert second.headers == {"X-Order": "42", "Trace": "a b"}
    assert second.status is None


async def test_bad_subject_and_header_are_refused(nc: Connection) -> None:
    with pytest.raises(ValueError, match="bad subject"):
        await nc.publish("has space", b"")
    with pytest.raises(ValueError, match="bad header name"):
        await nc.publish("ok", b"", headers={"bad:name": "x"})


async def test_an_over_long_subject_is_refused_and_the_connection_lives(nc: Connection) -> None:
    # The server would close the connection on a control line past 4 KiB (the silo's
    # calls, replies and heartbeats share it): refuse the one publish instead.
    sub = await nc.subscribe("core.after")
    long_subject = "a." + "x" * 5000
    with pytest.raises(ValueError, match="bytes, more than 2048"):
        await nc.publish(long_subject, b"")
    with pytest.raises(ValueError, match="bytes, more than 2048"):
        nc.publish_nowait("core.after", b"", reply=long_subject)
    with pytest.raises(ValueError, match="bytes, more than 2048"):
        await nc.subscribe(long_subject)
    await nc.publish("core.after", b"still here")
    with trio.fail_after(5):
        assert (await sub.__anext__()).data == b"still here"
    assert nc.statistics().reconnects == 0


async def test_a_subject_that_is_not_utf8_does_not_end_the_reader(
    nc: Connection, nats_url: str
) -> None:
    # A raw client (not ours) publishes bytes that are no UTF-8 on a subject we watch.
    sub = await nc.subscribe("raw.>")
    await nc.flush()
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"CONNECT {}\r\nPUB raw.\xff\xfe 2\r\nhi\r\nPING\r\n")
        with trio.fail_after(5):
            while b"PONG" not in await stream.receive_some():
                pass
    with trio.fail_after(5):
        odd = await sub.__anext__()
    assert odd.data == b"hi"
    assert odd.subject == "raw.\udcff\udcfe"  # lone surrogates, which decoders refuse
    with pytest.raises(ValueError, match="not text"):
        await nc.publish(odd.subject, b"")
    await nc.publish("raw.ok", b"after")
    with trio.fail_after(5):
        assert (await sub.__anext__()).data == b"after"


async def test_replies_arrive_under_the_inbox_prefix(nc: Connection, nats_url: str) -> None:
    responder = await nc.subscribe("core.inbox")
    async with connect(nats_url, inbox_prefix="_INBOX_web") as web:
        assert web.new_inbox().startswith("_INBOX_web.")
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                msg = await responder.__anext__()
                assert msg.reply.startswith("_INBOX_web.")
                await nc.publish(msg.reply, b"pong")

            nursery.start_soon(answer)
            with trio.fail_after(5):
                assert (await web.request("core.inbox", b"ping")).data == b"pong"
    with pytest.raises(ValueError, match="inbox_prefix"):
        async with connect(nats_url, inbox_prefix="_INBOX.>"):
            pass  # pragma: no cover


async def test_queue_group_delivers_each_message_once(nc: Connection) -> None:
    subs = [await nc.subscribe("core.q", queue="workers") for _ in range(3)]
    for i in range(300):
        await nc.publish("core.q", str(i).encode())
    await nc.flush()
    for sub in subs:
        await sub.unsubscribe()
    seen = []
    for sub in subs:
        per_member = [msg.data async for msg in sub]
        assert per_member  # every member of the group got some
        seen += per_member
    assert sorted(seen) == sorted(str(i).encode() for i in range(300))


async def test_request_reply_100_concurrent(nc: Connection) -> None:
    sub = await nc.subscribe("core.echo")
    replies: dict[int, bytes] = {}

    async def respond() -> None:
        async for msg in sub:
            await msg.respond(b"re:" + msg.data)

    async def ask(i: int) -> None:
        reply = await nc.request("core.echo", str(i).encode())
        replies[i] = reply.data

    async with trio.open_nursery() as nursery:
        nursery.start_soon(respond)
        async with trio.open_nursery() as callers:
            for i in range(100):
                callers.start_soon(ask, i)
        nursery.cancel_scope.cancel()
    assert replies == {i: f"re:{i}".encode() for i in range(100)}
    assert nc.statistics().pending_requests == 0


async def test_no_responders(nc: Connection) -> None:
    with pytest.raises(NoRespondersError, match="no responders"):
        await nc.request("core.nobody.home", b"?")
    assert nc.statistics().pending_requests == 0


async def test_cancelled_request_leaves_no_pending_entry(nc: Connection) -> None:
    sub = await nc.subscribe("core.silent")  # receives, never answers
    with trio.move_on_after(0.05) as scope:
        await nc.request("core.silent", b"hello?")
    assert scope.cancelled_caught
    assert nc.statistics().pending_requests == 0
    assert (await sub.next_msg()).data == b"hello?"


async def test_a_cancelled_request_hands_its_late_reply_to_on_cancel(nc: Connection) -> None:
    sub = await nc.subscribe("core.slow")
    late: list[LateReply] = []
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:

            async def cancel_when_received() -> None:
                request = await sub.next_msg()
                scope.cancel()
                await trio.lowlevel.checkpoint()
                await request.respond(b"done anyway")

            nursery.start_soon(cancel_when_received)
            await nc.request("core.slow", b"work", on_cancel=late.append)
    assert scope.cancelled_caught
    assert len(late) == 1
    with trio.fail_after(10):
        await late[0].wait()
    assert late[0].settled
    result = late[0].result
    assert isinstance(result, Msg)
    assert result.data == b"done anyway"
    assert nc.statistics().pending_requests == 0


async def test_a_late_reply_that_never_comes_can_be_forgotten(nc: Connection) -> None:
    await nc.subscribe("core.mute")  # receives, never answers
    late: list[LateReply] = []
    with trio.move_on_after(0.05):
        await nc.request("core.mute", b"?", on_cancel=late.append)
    assert len(late) == 1
    assert nc.statistics().pending_requests == 1
    with trio.move_on_after(0.05):
        await late[0].wait()
    late[0].forget()
    assert not late[0].settled
    assert nc.statistics().pending_requests == 0


async def test_large_payload(nc: Connection) -> None:
    sub = await nc.subscribe("core.big")
    big = bytes(range(256)) * (nc.max_payload // 256)
    assert len(big) == nc.max_payload
    await nc.publish("core.big", big)
    assert (await sub.next_msg()).data == big
    with pytest.raises(ValueError, match="max_payload"):
        await nc.publish("core.big", big + b"!")


async def test_backpressure_block_loses_nothing(nc: Connection) -> None:
    sub = await nc.subscribe("core.slow", max_pending=10, slow_consumer="block")
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            for i in range(1000):
                await nc.publish("core.slow", b"%d" % i)

        nursery.start_soon(produce)
        got = []
        async for msg in sub:
            got.append(int(msg.data))
            assert sub.statistics().pending <= 10
            if len(got) % 100 == 0:
                await trio.sleep(0.001)  # a slow consumer
            if len(got) == 1000:
                break
    assert got == list(range(1000))
    assert sub.statistics().dropped == 0


async def test_backpressure_drop_counts_dropped(nc: Connection) -> None:
    sub = await nc.subscribe("core.drop", max_pending=10, slow_consumer="drop")
    for i in range(500):
        await nc.publish("core.drop", b"%d" % i)
    await nc.flush()  # all 500 reached the server, and (PONG after MSGs) arrived here
    stats = sub.statistics()
    assert stats.pending == 10
    assert stats.dropped == 490
    assert stats.delivered == 10


async def test_flush_and_statistics(nc: Connection) -> None:
    before = nc.statistics()
    for _ in range(100):
        await nc.publish("core.flush", b"x" * 10)
    await nc.flush()
    after = nc.statistics()
    assert after.out_msgs - before.out_msgs == 100
    assert after.out_bytes - before.out_bytes == 1000
    assert after.pending_bytes == 0
    assert after.connected


async def test_unsubscribe_ends_iteration(nc: Connection) -> None:
    sub = await nc.subscribe("core.unsub")
    await nc.publish("core.unsub", b"1")
    await nc.flush()
    await sub.unsubscribe()
    await nc.publish("core.unsub", b"2")
    await nc.flush()
    assert [m.data async for m in sub] == [b"1"]


async def test_drain_delivers_in_flight_then_closes(nats_url: str) -> None:
    received: list[bytes] = []
    async with connect(nats_url) as nc, trio.open_nursery() as nursery:
        sub = await nc.subscribe("core.drain")

        async def consume() -> None:
            async for msg in sub:
                received.append(msg.data)

        nursery.start_soon(consume)
        for i in range(200):
            await nc.publish("core.drain", b"%d" % i)
        await nc.drain()
        with pytest.raises(ConnectionClosedError):
            await nc.publish("core.drain", b"late")
    assert received == [b"%d" % i for i in range(200)]


async def test_connect_refused_names_the_servers() -> None:
    with pytest.raises(NatsConnectionError, match="could not connect"):
        async with connect(["nats://127.0.0.1:1", "127.0.0.1:2"]):
            pass  # pragma: no cover


async def test_closed_connection_refuses_use(nats_url: str) -> None:
    async with connect(nats_url) as nc:
        sub = await nc.subscribe("core.closed")
    with pytest.raises(ConnectionClosedError, match="connect"):
        await nc.publish("core.closed", b"")
    with pytest.raises(ConnectionClosedError):
        await nc.request("core.closed", b"")
    assert [m async for m in sub] == []


async def test_publish_nowait_buffers_like_publish(nc: Connection) -> None:
    sub = await nc.subscribe("core.nowait")
    nc.publish_nowait("core.nowait", b"one")
    nc.publish_nowait("core.nowait", b"two", headers={"K": "v"})
    nc.publish_nowait("core.nowait", reply="core.reply")
    await nc.publish("core.nowait", b"awaited")
    first, second, third, fourth = [await sub.next_msg() for _ in range(4)]
    assert (first.data, first.headers) == (b"one", None)
    assert (second.data, second.headers) == (b"two", {"K": "v"})
    assert (third.data, third.reply) == (b"", "core.reply")
    assert fourth.data == b"awaited"
    with pytest.raises(ValueError, match="max_payload"):
        nc.publish_nowait("core.nowait", b"x" * (nc.max_payload + 1))
    with pytest.raises(ValueError, match="bad subject"):
        nc.publish_nowait("core now", b"")


async def test_publish_nowait_would_block_when_the_buffer_is_full(nats_url: str) -> None:
    async with connect(nats_url, max_pending_bytes=1000) as nc:
        sub = await nc.subscribe("core.full")
        sent = 0
        with pytest.raises(trio.WouldBlock):  # noqa: PT012 - the loop fills the buffer
            while True:
                nc.publish_nowait("core.full", b"x" * 100)
                sent += 1
        assert 0 < sent <= 10
        assert nc.statistics().pending_bytes >= 1000
        await nc.publish("core.full", b"last")  # waits for room, then buffers
        got = [(await sub.next_msg()).data for _ in range(sent + 1)]
        assert got == [b"x" * 100] * sent + [b"last"]
        nc.publish_nowait("core.full", b"room again")
        assert (await sub.next_msg()).data == b"room again"


async def test_publish_nowait_on_a_closed_connection(nats_url: str) -> None:
    async with connect(nats_url) as nc:
        pass
    with pytest.raises(ConnectionClosedError):
        nc.publish_nowait("core.closed", b"")
    async with connect(nats_url, max_pending_bytes=1) as nc:
        await nc.drain()
    nc._buf += b"x"  # full and closed: closed wins over WouldBlock
    with pytest.raises(ConnectionClosedError):
        nc.publish_nowait("core.closed", b"")
