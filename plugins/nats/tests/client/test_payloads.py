"""Payload subscriptions (``Connection.subscribe_payloads``) and the connection's parser.

A :class:`PayloadSubscription` hands out payloads in batches: in order, at most *limit* at
a time, nothing lost to a cancelled take, its policy for a full buffer, and an end once
unsubscribed. The parser is fed by a scripted server on a real socket, which sends its
frames in pieces of every size (a message split anywhere, one larger than a read).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from trio_grains_nats import Connection, ConnectionClosedError, connect
from trio_grains_nats.client import PayloadSubscription


async def take(sub: PayloadSubscription, n: int, limit: int = 1024) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(5):
        while len(got) < n:
            got += await sub.next_batch(limit)
    return got


async def test_payloads_arrive_in_order_in_batches_of_at_most_limit(nc: Connection) -> None:
    sub = await nc.subscribe_payloads("pay.order")
    sent = [str(i).encode() for i in range(300)]
    for payload in sent:
        nc.publish_nowait("pay.order", payload)
    await nc.flush()
    first = await sub.next_batch(100)
    assert first == sent[:100]  # all had arrived: a full batch
    assert await take(sub, 200, limit=7) == sent[100:]
    stats = sub.statistics()
    assert (stats.delivered, stats.pending, stats.dropped) == (300, 0, 0)


async def test_headers_and_reply_subjects_are_dropped_payloads_kept(nc: Connection) -> None:
    sub = await nc.subscribe_payloads("pay.hdr")
    await nc.publish("pay.hdr", b"a", headers={"X-One": "1"})
    await nc.publish("pay.hdr", b"b", reply="pay.somewhere")
    await nc.publish("pay.hdr", b"")
    assert await take(sub, 3) == [b"a", b"b", b""]


async def test_a_cancelled_take_loses_nothing(nc: Connection) -> None:
    sub = await nc.subscribe_payloads("pay.cancel")
    with trio.move_on_after(0.05) as scope:
        await sub.next_batch()
    assert scope.cancelled_caught
    await nc.publish("pay.cancel", b"kept")
    await nc.flush()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await sub.next_batch()  # a cancellation point even with payloads waiting
    assert await take(sub, 1) == [b"kept"]


async def test_one_task_takes_at_a_time(nc: Connection) -> None:
    sub = await nc.subscribe_payloads("pay.busy")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.next_batch)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await sub.next_batch()
        nursery.cancel_scope.cancel()


async def test_a_full_buffer_blocks_the_reader_or_drops_by_policy(nc: Connection) -> None:
    blocking = await nc.subscribe_payloads("pay.full", max_pending=3)
    dropping = await nc.subscribe_payloads("pay.full", max_pending=3, slow_consumer="drop")
    sent = [str(i).encode() for i in range(10)]
    for payload in sent:
        await nc.publish("pay.full", payload)
    received: list[bytes] = []
    with trio.fail_after(5):
        while len(received) < len(sent):  # the reader waits for room, then goes on
            received += await blocking.next_batch()
            await trio.sleep(0.01)
    assert received == sent
    await nc.flush()
    assert await dropping.next_batch() == sent[:3]
    assert dropping.statistics().dropped == 7


async def test_unsubscribed_it_hands_out_what_is_left_then_ends(nc: Connection) -> None:
    sub = await nc.subscribe_payloads("pay.end")
    await nc.publish("pay.end", b"last")
    await nc.flush()
    await sub.unsubscribe()
    assert await sub.next_batch() == [b"last"]
    with pytest.raises(ConnectionClosedError, match="has ended"):
        await sub.next_batch()


async def test_a_waiting_take_ends_when_the_subscription_is_drained(nc: Connection) -> None:
    sub = await nc.subscribe_payloads("pay.drain")
    ended: list[Exception] = []

    async def wait() -> None:
        try:
            await sub.next_batch()
        except ConnectionClosedError as exc:
            ended.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            await sub.drain()
    assert len(ended) == 1


# -- the parser, fed in pieces by a scripted server -------------------------------------------

INFO = {"server_id": "scripted", "proto": 1, "headers": True, "max_payload": 4 * 1024 * 1024}


@asynccontextmanager
async def scripted_server(
    script: Callable[[trio.SocketStream], object],
) -> AsyncIterator[str]:
    """A server on a real socket for one connection (later ones are closed at once): the
    handshake of a NATS server (INFO, then PONG to the client's PING), then ``await
    script(stream)``; its URL."""
    connections = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections > 1:
            return
        await stream.send_all(b"INFO " + json.dumps(INFO).encode() + b"\r\n")
        seen = b""
        while b"PING\r\n" not in seen:
            seen += await stream.receive_some()
        await stream.send_all(b"PONG\r\n")
        await script(stream)  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        listener = listeners[0]
        port = listener.socket.getsockname()[1]
        yield f"nats://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def until_subscribed(stream: trio.SocketStream, sids: int) -> None:
    """Read the client's commands until it has sent *sids* SUBs (its inbox's is one)."""
    seen = b""
    while seen.count(b"SUB ") < sids:
        seen += await stream.receive_some()


async def answer_pings(stream: trio.SocketStream, ponged: trio.Event | None = None) -> None:
    """Answer the client's PINGs (its flush when it closes); set *ponged* once it sent a
    PONG (its answer to ours)."""
    seen = b""
    while data := await stream.receive_some():
        seen += data
        for _ in range(seen.count(b"PING\r\n")):
            await stream.send_all(b"PONG\r\n")
        if ponged is not None and b"PONG\r\n" in seen:
            ponged.set()
        seen = seen[seen.rfind(b"\r\n") + 2 :]


def hmsg(subject: bytes, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    hdr = b"NATS/1.0\r\n" + headers + b"\r\n"
    size = b"%d %d" % (len(hdr), len(hdr) + len(payload))
    return b" ".join([b"HMSG", subject, b"2", *([reply] if reply else []), size]) + (
        b"\r\n" + hdr + payload + b"\r\n"
    )


def frames(big: bytes = bytes(range(256)) * 4096) -> tuple[bytes, list[bytes]]:
    """What the scripted server sends for sid 2, and the payloads the client must see
    (*big*: by default 1 MiB, more than one read)."""
    wire = b"".join(
        [
            b"MSG sub.a 2 5\r\nhello\r\n",
            b"PING\r\n",
            b"MSG sub.b 2 reply.to 0\r\n\r\n",
            b"+OK\r\n",
            hmsg(b"sub.c", b"", b"X-A: 1\r\n", b"world"),
            b'INFO {"max_payload": 4194304}\r\n',
            b"MSG sub.d 2 %d\r\n%s\r\n" % (len(big), big),
            hmsg(b"sub.e", b"reply.x", b"", b"ok"),
            b"MSG sub.f 2 3\r\n\r\n\r\r\n",
        ]
    )
    return wire, [b"hello", b"", b"world", big, b"ok", b"\r\n\r"]


@pytest.mark.parametrize("piece", [1, 2, 7, 64, 4096, 1 << 20])
async def test_the_parser_takes_frames_split_anywhere(piece: int) -> None:
    # Small pieces split everywhere (but a 1 MiB payload would take a while)
    wire, expected = frames(b"0123456789" * 30) if piece < 4096 else frames()
    ponged = trio.Event()

    async def script(stream: trio.SocketStream) -> None:
        await until_subscribed(stream, 2)
        for i in range(0, len(wire), piece):
            await stream.send_all(wire[i : i + piece])
        await answer_pings(stream, ponged)

    async with scripted_server(script) as url, connect(url, name="parser") as nc:
        sub = await nc.subscribe_payloads("sub.>")
        assert await take(sub, len(expected)) == expected
        with trio.fail_after(5):
            await ponged.wait()
        assert nc.statistics().in_msgs == len(expected)
        assert nc.max_payload == 4 * 1024 * 1024


async def test_messages_reach_ordinary_subscriptions_with_subject_reply_and_headers() -> None:
    wire, expected = frames()

    async def script(stream: trio.SocketStream) -> None:
        await until_subscribed(stream, 2)
        await stream.send_all(wire)
        await answer_pings(stream)

    async with scripted_server(script) as url, connect(url, name="parser") as nc:
        sub = await nc.subscribe("sub.>")
        with trio.fail_after(5):
            msgs = [await sub.next_msg() for _ in expected]
    assert [m.data for m in msgs] == expected
    assert [m.subject for m in msgs] == ["sub.a", "sub.b", "sub.c", "sub.d", "sub.e", "sub.f"]
    assert [m.reply for m in msgs] == ["", "reply.to", "", "", "reply.x", ""]
    assert msgs[2].headers == {"X-A": "1"}
    assert msgs[4].headers is None


@pytest.mark.parametrize(
    "bad",
    [
        b"MSG sub.a 2\r\n",  # too few fields
        b"MSG sub.a two 5\r\nhello\r\n",  # not a number
        b"HMSG sub.a 2 9 5\r\nNATS/1.0\r\n\r\n\r\n",  # headers larger than the message
        b"WHAT is this\r\n",
        b"INFO [1, 2]\r\n",
        b"MSG " + b"x" * 5000,  # no end of line within 4 KiB
    ],
)
async def test_a_malformed_frame_costs_the_connection_not_the_program(bad: bytes) -> None:
    async def script(stream: trio.SocketStream) -> None:
        await until_subscribed(stream, 2)
        await stream.send_all(bad)
        await trio.sleep_forever()

    async with scripted_server(script) as url, connect(url, reconnect=False) as nc:
        sub = await nc.subscribe_payloads("sub.>")
        with pytest.raises(ConnectionClosedError), trio.fail_after(5):
            await sub.next_batch()
        assert nc.statistics().connected is False
