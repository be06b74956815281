"""Reconnecting: the server stops and comes back on the same port."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from trio_grains_nats import ConnectionClosedError, connect
from trio_grains_nats.testing import free_port, run_nats_server


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
