"""Reconnecting: the server stops and comes back on the same port."""

from __future__ import annotations

import contextlib
import functools
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


class FreezingProxy:
    """A TCP relay to a real server that can stop forwarding (a network partition)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self._thawed = trio.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._thawed = trio.Event()

    def thaw(self) -> None:
        self._thawed.set()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for data in src:
                await self._thawed.wait()
                await dst.send_all(data)
        await dst.aclose()

    async def handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server)
            nursery.start_soon(self._pump, server, client)


async def test_unanswered_pings_mark_the_connection_stale_and_reconnect(
    tmp_path: Path,
) -> None:
    stack = contextlib.ExitStack()
    url = await _start(stack, tmp_path, free_port())
    proxy = FreezingProxy(int(url.rsplit(":", 1)[1]))
    try:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            proxy_port = listeners[0].socket.getsockname()[1]
            async with connect(
                f"nats://127.0.0.1:{proxy_port}",
                ping_interval=0.1,
                max_outstanding_pings=2,
                reconnect_wait=0.05,
                max_reconnect_attempts=-1,
            ) as nc:
                sub = await nc.subscribe("p.x")
                proxy.freeze()  # PINGs now go unanswered
                await _wait_until(lambda: not nc.statistics().connected)
                proxy.thaw()
                await _wait_until(lambda: nc.statistics().connected)
                assert nc.statistics().reconnects >= 1
                assert proxy.connections >= 2
                await nc.publish("p.x", b"after")
                with trio.fail_after(10):
                    assert (await sub.next_msg()).data == b"after"
            nursery.cancel_scope.cancel()
    finally:
        stack.close()
