"""The :class:`Messenger` (``trio_grains/_cluster/messenger.py``) alone, over the in-memory
transport: messengers and endpoints of one :class:`MemoryCluster`, no silo behind them.

What it promises: replies go to the caller whose call they answer, in whatever order they
come; a reply is taken only for a pending call and from the silo the call went to (or, for a
call that silo may forward, from a member of the cluster); a cancelled caller tells the
callee; nothing sent from a callback raises, and what could not be sent is counted. The
same rules seen through whole silos and clients are in ``test_wire_security.py`` and
``test_cluster_behaviour.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

from trio_grains import (
    Grain,
    GrainCallTimeoutError,
    GrainId,
    MemoryCluster,
    MessageTooLargeError,
    SiloUnavailableError,
    Transport,
    TransportClosedError,
    TransportError,
    idempotent,
    one_way,
)
from trio_grains._calls import TimeoutWheel
from trio_grains._cluster import envelope as env
from trio_grains._cluster.messenger import DROP_REASONS, Messenger, RerouteError
from trio_grains._grain import class_info
from trio_grains._serialization import Codec, make_converter


class EchoGrain(Grain):
    async def echo(self, text: str) -> str:
        return text

    @idempotent
    async def peek(self) -> int:
        return 0

    @one_way
    async def note(self, text: str) -> None:
        pass


METHODS = class_info(EchoGrain).methods
ECHO, PEEK, NOTE = METHODS["echo"], METHODS["peek"], METHODS["note"]
GRAIN = GrainId.parse("echo/a")
CODEC = Codec(make_converter())


def no_drops() -> dict[str, int]:
    return dict.fromkeys(DROP_REASONS, 0)


@attrs.define(eq=False)
class FlakyTransport(Transport):
    """A transport that fails on demand: *error* from every send, *full* for an outgoing
    buffer that has no room (``send_nowait`` raises ``WouldBlock``)."""

    inner: Transport
    error: Exception | None = None
    full: bool = False

    @property
    def address(self) -> str:
        return self.inner.address

    @property
    def max_message_size(self) -> int:
        return self.inner.max_message_size

    def is_endpoint_address(self, address: str) -> bool:
        return self.inner.is_endpoint_address(address)

    async def send(self, address: str, message: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        await self.inner.send(address, message)

    def send_nowait(self, address: str, message: bytes) -> None:
        if self.full:
            raise trio.WouldBlock
        if self.error is not None:
            raise self.error
        self.inner.send_nowait(address, message)

    async def receive(self) -> bytes:
        return await self.inner.receive()


@attrs.define(eq=False)
class Node:
    """One messenger, and what reached its handlers."""

    messenger: Messenger
    transport: Transport
    requests: trio.MemoryReceiveChannel[env.Request]
    cancels: list[tuple[str, int]]

    async def next_request(self) -> env.Request:
        with trio.fail_after(5):  # a deadline, not a pause: the request is already sent
            return await self.requests.receive()

    def answer(self, request: env.Request, text: str) -> None:
        self.messenger.reply(request, env.OK, CODEC.encode_result(ECHO, text))


@attrs.define(eq=False)
class Net:
    cluster: MemoryCluster
    #: silo id -> address: the membership view every messenger here shares
    addresses: dict[str, str] = attrs.field(factory=dict)

    @asynccontextmanager
    async def node(
        self, endpoint_id: str, wrap: Callable[[Transport], Transport] = lambda t: t
    ) -> AsyncIterator[Node]:
        async with self.cluster.open_endpoint(endpoint_id) as inner:
            transport = wrap(inner)
            self.addresses[endpoint_id] = transport.address
            wheel = TimeoutWheel(30, lambda call, t: GrainCallTimeoutError(call.describe()))
            messenger = Messenger(transport, CODEC, wheel, endpoint_id, self.addresses.get)
            send, receive = trio.open_memory_channel[env.Request](math.inf)
            node = Node(messenger, transport, receive, [])
            messenger.on_request = send.send_nowait
            messenger.on_cancel = lambda reply_to, call_id: node.cancels.append((reply_to, call_id))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wheel.run)
                await nursery.start(messenger.run)
                yield node
                nursery.cancel_scope.cancel()
            del self.addresses[endpoint_id]


@pytest.fixture
def net() -> Net:
    return Net(MemoryCluster())


async def call_echo(node: Node, silo_id: str, text: str, results: dict[str, object]) -> None:
    """Call echo(*text*) on *silo_id*; its result, or the exception it raised, by *text*."""
    try:
        results[text] = await node.messenger.call(silo_id, GRAIN, ECHO, (text,), {})
    except Exception as exc:
        results[text] = exc


# -- requests and replies ---------------------------------------------------------------------


async def test_replies_reach_their_own_callers_in_any_order(net: Net) -> None:
    results: dict[str, object] = {}
    async with net.node("client-1") as client, net.node("silo-1") as silo:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_echo, client, "silo-1", "a", results)
            nursery.start_soon(call_echo, client, "silo-1", "b", results)
            first, second = await silo.next_request(), await silo.next_request()
            assert client.messenger.pending() == 2
            for request in (second, first):  # answered in the other order
                text = CODEC.decode_call(ECHO, request.args)["text"]
                assert isinstance(text, str)
                silo.answer(request, text.upper())
        assert results == {"a": "A", "b": "B"}
        assert first.call_id != second.call_id
        assert first.reply_to == second.reply_to == client.transport.address
        assert (first.grain_id, first.method) == ("echo/a", "echo")
        assert client.messenger.pending() == 0
        assert (client.messenger.sent, client.messenger.received) == (2, 2)
        assert (silo.messenger.sent, silo.messenger.received) == (2, 2)
        assert client.messenger.dropped == silo.messenger.dropped == no_drops()


async def test_an_error_reply_raises_the_exception_and_reroute_asks_to_locate_again(
    net: Net,
) -> None:
    results: dict[str, object] = {}
    async with (
        net.node("client-1") as client,
        net.node("silo-1") as silo,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(call_echo, client, "silo-1", "error", results)
        nursery.start_soon(call_echo, client, "silo-1", "reroute", results)
        for _ in range(2):
            request = await silo.next_request()
            if CODEC.decode_call(ECHO, request.args)["text"] == "error":
                silo.messenger.reply_error(request, KeyError("no such order"))
            else:
                silo.messenger.reply(request, env.REROUTE, b"")
    assert isinstance(results["error"], KeyError)
    assert results["error"].args == ("no such order",)
    assert isinstance(results["reroute"], RerouteError)


async def test_a_silo_without_an_address_is_rerouted_before_anything_is_sent(net: Net) -> None:
    async with net.node("client-1") as client:
        with pytest.raises(RerouteError):
            await client.messenger.call("silo-9", GRAIN, ECHO, ("x",), {})
        assert client.messenger.sent == 0
        assert client.messenger.pending() == 0


async def test_a_one_way_call_waits_for_nothing_and_asks_for_no_reply(net: Net) -> None:
    async with net.node("client-1") as client, net.node("silo-1") as silo:
        assert await client.messenger.call("silo-1", GRAIN, NOTE, ("hi",), {}) is None
        assert client.messenger.pending() == 0
        request = await silo.next_request()
        assert request.reply_to == ""
        silo.messenger.reply_error(request, ValueError("logged, not sent"))
        assert silo.messenger.sent == 0


# -- what a reply must be to be taken ---------------------------------------------------------


async def test_a_reply_with_an_unknown_call_id_is_dropped_and_counted(net: Net) -> None:
    results: dict[str, object] = {}
    async with (
        net.node("client-1") as client,
        net.node("silo-1") as silo,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(call_echo, client, "silo-1", "a", results)
        request = await silo.next_request()
        for call_id in (request.call_id + 1, request.call_id ^ 1, 1):
            silo.transport.send_nowait(
                client.transport.address,
                env.encode_reply(call_id, env.OK, CODEC.encode_result(ECHO, "x"), "silo-1"),
            )
        await trio.testing.wait_all_tasks_blocked()
        assert client.messenger.dropped == {**no_drops(), "unexpected_reply": 3}
        assert results == {}  # still waiting
        silo.answer(request, "right")
    assert results == {"a": "right"}


async def test_a_reply_from_another_silo_than_the_call_went_to_is_dropped(net: Net) -> None:
    """The call id is what a stranger cannot guess; the silo check keeps a silo from
    answering, by mistake or by a bug, a call that went elsewhere."""
    results: dict[str, object] = {}
    async with (
        net.node("client-1") as client,
        net.node("silo-1") as silo,
        net.node("silo-2") as other,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(call_echo, client, "silo-1", "a", results)
        request = await silo.next_request()
        for claimed in ("silo-2", "stranger"):
            other.transport.send_nowait(
                client.transport.address,
                env.encode_reply(request.call_id, env.OK, CODEC.encode_result(ECHO, "x"), claimed),
            )
        await trio.testing.wait_all_tasks_blocked()
        assert client.messenger.dropped == {**no_drops(), "unexpected_reply": 2}
        silo.answer(request, "right")
    assert results == {"a": "right"}


@pytest.mark.parametrize(("answered_by", "taken"), [("silo-2", True), ("stranger", False)])
async def test_a_call_a_silo_may_forward_takes_a_reply_from_a_member_only(
    net: Net, answered_by: str, taken: bool
) -> None:
    results: list[object] = []

    async def call() -> None:
        results.append(
            await client.messenger.call("silo-1", GRAIN, ECHO, ("a",), {}, flags=env.LOCATE)
        )

    async with (
        net.node("client-1") as client,
        net.node("silo-1") as silo,
        net.node("silo-2") as other,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(call)
        request = await silo.next_request()
        assert request.flags == env.LOCATE
        other.transport.send_nowait(
            client.transport.address,
            env.encode_reply(
                request.call_id, env.OK, CODEC.encode_result(ECHO, "forwarded"), answered_by
            ),
        )
        await trio.testing.wait_all_tasks_blocked()
        if not taken:
            assert client.messenger.dropped["unexpected_reply"] == 1
            silo.answer(request, "direct")
    assert results == (["forwarded"] if taken else ["direct"])


# -- cancellation and failed silos ------------------------------------------------------------


async def test_a_cancelled_caller_tells_the_callee_and_its_late_reply_is_dropped(
    net: Net,
) -> None:
    results: dict[str, object] = {}
    async with net.node("client-1") as client, net.node("silo-1") as silo:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_echo, client, "silo-1", "a", results)
            request = await silo.next_request()
            nursery.cancel_scope.cancel()
        assert results == {}
        assert client.messenger.pending() == 0
        await trio.testing.wait_all_tasks_blocked()
        assert silo.cancels == [(client.transport.address, request.call_id)]
        silo.answer(request, "too late")  # it crossed the cancel
        await trio.testing.wait_all_tasks_blocked()
        assert client.messenger.dropped == {**no_drops(), "unexpected_reply": 1}


async def test_a_caller_cancelled_before_it_calls_sends_nothing(net: Net) -> None:
    async with net.node("client-1") as client, net.node("silo-1") as silo:
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.messenger.call("silo-1", GRAIN, ECHO, ("a",), {})
        assert scope.cancelled_caught
        assert (client.messenger.sent, client.messenger.pending()) == (0, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert silo.messenger.received == 0


async def test_calls_to_a_failed_silo_fail_and_idempotent_ones_are_rerouted(net: Net) -> None:
    results: dict[str, object] = {}

    async def peek() -> None:
        try:
            results["peek"] = await client.messenger.call("silo-1", GRAIN, PEEK, (), {})
        except Exception as exc:
            results["peek"] = exc

    async with (
        net.node("client-1") as client,
        net.node("silo-1") as silo,
        net.node("silo-2") as other,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(call_echo, client, "silo-1", "a", results)
        nursery.start_soon(call_echo, client, "silo-2", "b", results)
        nursery.start_soon(peek)
        await silo.next_request()
        await silo.next_request()
        to_other = await other.next_request()
        assert client.messenger.fail_calls_to("silo-1", "died") == 2
        await trio.testing.wait_all_tasks_blocked()
        assert client.messenger.pending() == 1  # the call to silo-2 waits on
        other.answer(to_other, "B")
    assert isinstance(results["a"], SiloUnavailableError)
    assert "silo 'silo-1' died before echo/a.echo() replied" in str(results["a"])
    assert isinstance(results["peek"], RerouteError)  # the call path sends it again
    assert results["b"] == "B"


# -- sending from callbacks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TransportError("backend down"), "send_failed"),
        (MessageTooLargeError("too large"), "too_large"),
        (TransportClosedError("closed"), None),  # the silo is stopping: not a drop
    ],
)
async def test_send_nowait_never_raises_and_counts_what_it_could_not_send(
    net: Net, error: Exception, reason: str | None
) -> None:
    flaky: list[FlakyTransport] = []

    def wrap(inner: Transport) -> Transport:
        flaky.append(FlakyTransport(inner, error=error))
        return flaky[0]

    async with net.node("silo-1", wrap) as silo, net.node("client-1") as client:
        silo.messenger.send_nowait(client.transport.address, b"reply")
        expected = no_drops()
        if reason is not None:
            expected[reason] = 1
        assert silo.messenger.dropped == expected
        assert silo.messenger.sent == 0


async def test_a_full_outgoing_buffer_queues_the_message_for_the_backlog(net: Net) -> None:
    async with (
        net.node("silo-1", lambda inner: FlakyTransport(inner, full=True)) as silo,
        net.cluster.open_endpoint("observer") as observer,
    ):
        silo.messenger.send_nowait(observer.address, b"first")
        silo.messenger.send_nowait(observer.address, b"second")
        assert silo.messenger.sent == 0  # queued, not lost
        with trio.fail_after(5):
            received = [await observer.receive(), await observer.receive()]
        assert received == [b"first", b"second"]
        assert silo.messenger.sent == 2
        assert silo.messenger.dropped == no_drops()


async def test_a_backlogged_message_that_fails_costs_only_itself(net: Net) -> None:
    transports: list[FlakyTransport] = []

    def wrap(inner: Transport) -> Transport:
        transports.append(FlakyTransport(inner, full=True, error=TransportError("down")))
        return transports[0]

    async with net.node("silo-1", wrap) as silo, net.cluster.open_endpoint("observer") as obs:
        silo.messenger.send_nowait(obs.address, b"lost")
        await trio.testing.wait_all_tasks_blocked()
        assert silo.messenger.dropped == {**no_drops(), "send_failed": 1}
        transports[0].error = None  # the backend is back: the backlog task still runs
        silo.messenger.send_nowait(obs.address, b"kept")
        with trio.fail_after(5):
            assert await obs.receive() == b"kept"


async def test_a_request_handler_that_raises_does_not_stop_the_receive_loop(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[str] = []

    async with net.node("client-1") as client, net.node("silo-1") as silo:

        def on_request(request: env.Request) -> None:
            text = CODEC.decode_call(NOTE, request.args)["text"]
            if text == "bad":
                raise RuntimeError("a bug in the handler")
            handled.append(text)

        silo.messenger.on_request = on_request
        for text in ("bad", "good"):
            await client.messenger.call("silo-1", GRAIN, NOTE, (text,), {})
        await trio.testing.wait_all_tasks_blocked()
    assert handled == ["good"]
    assert any("a request to echo/a.note() failed" in r.getMessage() for r in caplog.records)
