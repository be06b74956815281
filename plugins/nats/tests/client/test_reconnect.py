"""Reconnecting: the server stops and comes back on the same port."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from trio_grains_nats import ConnectionClosedError, connect
from trio_grains_nats.testing import free_port, run_freezing_relay, run_nats_server


async def _start(stack: contextlib.ExitStack, tmp: Path, port: int) -> str:
    server = run_nats_server(tmp, jetstream=False, port=port)
    url: str = await trio.to_thread.run_sync(stack.enter_context, server)
    return url


async def _wait_until(predicate: object) -> None:
    with trio.fail_after(10):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 - another process
            await trio.sleep(0.01)


async def test_reconnect_resubscribes_and_delivers_buffered_publishes(tmp_path: Path) -> None:
    port = free_port()
    first = contextlib.ExitStack()
    url = await _start(first, tmp_path / "one", port)
    second = contextlib.ExitStack()
    try:
        async with connect(url, reconnect_wait=0.05, max_reconnect_attempts=-1) as nc:
            sub = await nc.subscribe("r.x")
            responder = await nc.subscribe("r.svc")
            await nc.publish("r.x", b"before")
            assert (await sub.next_msg()).data == b"before"

            await trio.to_thread.run_sync(first.close)  # the server goes away
            await _wait_until(lambda: not nc.statistics().connected)
            for i in range(10):
                await nc.publish("r.x", b"during-%d" % i)  # buffered while disconnected
            assert nc.statistics().pending_bytes > 0

            await _start(second, tmp_path / "two", port)
            with trio.fail_after(10):
                got = [(await sub.next_msg()).data for _ in range(10)]
            assert got == [b"during-%d" % i for i in range(10)]
            stats = nc.statistics()
            assert stats.reconnects == 1
            assert stats.connected

            async def answer() -> None:
                msg = await responder.next_msg()
                await msg.respond(b"pong")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                assert (await nc.request("r.svc", b"ping")).data == b"pong"
            await nc.flush()
    finally:
        second.close()
        first.close()


async def test_giving_up_ends_subscriptions_with_an_error(tmp_path: Path) -> None:
    stack = contextlib.ExitStack()
    url = await _start(stack, tmp_path, free_port())
    try:
        async with connect(url, reconnect_wait=0.01, max_reconnect_attempts=2) as nc:
            sub = await nc.subscribe("r.y")
            await nc.flush()
            await trio.to_thread.run_sync(stack.close)
            with trio.fail_after(10), pytest.raises(ConnectionClosedError, match="lost"):
                await sub.next_msg()
            with pytest.raises(ConnectionClosedError, match="could not connect"):
                await nc.publish("r.y", b"")
    finally:
        stack.close()


async def test_failover_to_the_next_server_of_the_list(tmp_path: Path) -> None:
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    url_a = await _start(first, tmp_path / "a", free_port())
    url_b = await _start(second, tmp_path / "b", free_port())
    try:
        async with connect([url_a, url_b], reconnect_wait=0.05) as nc:
            sub = await nc.subscribe("f.x")
            await trio.to_thread.run_sync(first.close)  # A goes away for good
            await _wait_until(lambda: nc.statistics().reconnects == 1)
            assert nc.statistics().connected
            async with connect(url_b) as other:  # a publisher that only knows B
                await other.publish("f.x", b"via-b")
            with trio.fail_after(10):
                assert (await sub.next_msg()).data == b"via-b"  # resubscribed on B
    finally:
        second.close()
        first.close()


async def test_unanswered_pings_mark_the_connection_stale_and_reconnect(
    tmp_path: Path,
) -> None:
    stack = contextlib.ExitStack()
    url = await _start(stack, tmp_path, free_port())
    try:
        async with (
            run_freezing_relay(url) as relay,
            connect(
                relay.url,
                ping_interval=0.1,
                max_outstanding_pings=2,
                reconnect_wait=0.05,
                max_reconnect_attempts=-1,
            ) as nc,
        ):
            sub = await nc.subscribe("p.x")
            relay.freeze()  # PINGs now go unanswered
            await _wait_until(lambda: not nc.statistics().connected)
            relay.thaw()
            await _wait_until(lambda: nc.statistics().connected)
            assert nc.statistics().reconnects >= 1
            assert relay.connections >= 2
            await nc.publish("p.x", b"after")
            with trio.fail_after(10):
                assert (await sub.next_msg()).data == b"after"
    finally:
        stack.close()
