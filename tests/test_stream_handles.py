"""What user code holds of a stream (:class:`Stream`, subscription handles, the
``subscribe_items`` iterator) against a fake :class:`StreamRuntime`: no provider, no
adapter, no silo (on Trio's MockClock).

``tests/test_streams.py`` runs the same API end to end; here each call is checked at the
seam: what reaches the runtime, and what comes back to the user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_grains import (
    EncodedItem,
    SequenceToken,
    Stream,
    StreamError,
    StreamId,
    partition_for,
)
from trio_grains._serialization import Codec, make_converter
from trio_grains._streams.handles import (
    StreamRuntime,
    StreamSubscriptionHandle,
    bind_handle,
    new_stream,
)

STREAM = StreamId("orders", "k")


@attrs.frozen
class Order:
    id: int


@attrs.define
class Added:
    """One ``add_subscription`` call the fake runtime received."""

    stream_id: StreamId
    call: Callable[[Any, SequenceToken], Awaitable[Any]]
    item_type: Any
    describe: str
    from_token: SequenceToken | None
    listed: bool
    handle: StreamSubscriptionHandle


class FakeRuntime:
    """A :class:`StreamRuntime` that records what reaches it."""

    partitions = 7

    def __init__(self) -> None:
        self.codec = Codec(make_converter())
        self.published: list[tuple[StreamId, list[EncodedItem]]] = []
        self.subscribed: list[tuple[StreamId, Any, SequenceToken | None]] = []
        self.added: list[Added] = []
        self.unsubscribed: list[tuple[StreamId, str]] = []
        self.live: dict[str, StreamSubscriptionHandle] = {}
        self.refuse_subscriptions = False
        self._ids = 0

    def new_msg_id(self) -> str:
        self._ids += 1
        return f"id{self._ids}"

    def new_msg_ids(self, n: int) -> list[str]:
        return [self.new_msg_id() for _ in range(n)]

    async def publish_encoded(
        self, stream_id: StreamId, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        await trio.lowlevel.checkpoint()
        self.published.append((stream_id, list(items)))
        first = sum(len(batch) for _, batch in self.published) - len(items)
        return [SequenceToken(3, first + n) for n in range(len(items))]

    def _new_handle(self, stream_id: StreamId) -> StreamSubscriptionHandle:
        handle = StreamSubscriptionHandle(f"s{len(self.live)}", stream_id, "fake")
        self.live[handle.subscription_id] = handle
        return bind_handle(handle, self)

    async def subscribe(
        self,
        stream_id: StreamId,
        handler: Callable[..., Awaitable[Any]],
        *,
        from_token: SequenceToken | None = None,
    ) -> StreamSubscriptionHandle:
        await trio.lowlevel.checkpoint()
        self.subscribed.append((stream_id, handler, from_token))
        return self._new_handle(stream_id)

    async def add_subscription(
        self,
        stream_id: StreamId,
        call: Callable[[Any, SequenceToken], Awaitable[Any]],
        *,
        item_type: Any,
        describe: str,
        from_token: SequenceToken | None = None,
        listed: bool = True,
    ) -> StreamSubscriptionHandle:
        await trio.lowlevel.checkpoint()
        if self.refuse_subscriptions:
            raise StreamError("cannot rewind")
        handle = self._new_handle(stream_id)
        self.added.append(Added(stream_id, call, item_type, describe, from_token, listed, handle))
        return handle

    def unsubscribe(self, stream_id: StreamId, subscription_id: str) -> bool:
        self.unsubscribed.append((stream_id, subscription_id))
        return self.live.pop(subscription_id, None) is not None

    def subscriptions(self, stream_id: StreamId) -> list[StreamSubscriptionHandle]:
        return [h for h in self.live.values() if h.stream_id == stream_id]


def fake() -> tuple[FakeRuntime, Stream]:
    runtime = FakeRuntime()
    checked: StreamRuntime = runtime  # mypy checks the fake against the protocol
    return runtime, new_stream(STREAM, checked)


# --- publishing ------------------------------------------------------------------------------


async def test_publish_encodes_with_the_runtime_codec_and_a_fresh_msg_id() -> None:
    runtime, stream = fake()
    token = await stream.publish(Order(1))
    again = await stream.publish(Order(2), msg_id="order-2", headers={"h": "v"})
    ((sid, [first]), (_, [second])) = runtime.published
    assert sid == STREAM
    assert runtime.codec.loads(first.data, Order) == Order(1)
    assert (first.msg_id, dict(first.headers)) == ("id1", {})
    assert (second.msg_id, dict(second.headers)) == ("order-2", {"h": "v"})
    assert (token, again) == (SequenceToken(3, 0), SequenceToken(3, 1))


async def test_publish_batch_is_one_runtime_call_in_order() -> None:
    runtime, stream = fake()
    tokens = await stream.publish_batch([Order(1), Order(2), Order(3)])
    ((_, items),) = runtime.published
    assert [runtime.codec.loads(i.data, Order).id for i in items] == [1, 2, 3]
    assert [i.msg_id for i in items] == ["id1", "id2", "id3"]
    assert tokens == [SequenceToken(3, n) for n in range(3)]
    await stream.publish_batch([Order(4)], msg_ids=["mine"])
    assert runtime.published[1][1][0].msg_id == "mine"


async def test_publish_batch_refuses_mismatched_msg_ids_before_publishing() -> None:
    runtime, stream = fake()
    with pytest.raises(ValueError, match="2 items but 1 msg_ids"):
        await stream.publish_batch([Order(1), Order(2)], msg_ids=["a"])
    assert runtime.published == []


def test_partition_is_the_shared_partition_function() -> None:
    _, stream = fake()
    assert stream.partition == partition_for(STREAM, FakeRuntime.partitions)


# --- subscribing, handles --------------------------------------------------------------------


async def test_subscribe_hands_the_handler_to_the_runtime_and_returns_its_handle() -> None:
    runtime, stream = fake()

    async def on_order(order: Order) -> None:
        pass  # pragma: no cover - the fake runtime calls nothing

    since = SequenceToken(3, 5)
    handle = await stream.subscribe(on_order, from_token=since)
    assert runtime.subscribed == [(STREAM, on_order, since)]
    assert await stream.get_subscriptions() == [handle]
    assert await handle.unsubscribe() is True
    assert await handle.unsubscribe() is False
    assert runtime.unsubscribed == [(STREAM, handle.subscription_id)] * 2
    assert await stream.get_subscriptions() == []


async def test_a_handle_encodes_without_its_runtime() -> None:
    runtime, stream = fake()

    async def on_order(order: Order) -> None:
        pass  # pragma: no cover - the fake runtime calls nothing

    handle = await stream.subscribe(on_order)
    data = runtime.codec.dumps(handle, StreamSubscriptionHandle)
    restored = runtime.codec.loads(data, StreamSubscriptionHandle)
    assert restored == handle  # a value: equal without the runtime
    with pytest.raises(StreamError, match="not bound to a running stream provider"):
        await restored.unsubscribe()


# --- subscribe_items -------------------------------------------------------------------------


async def test_subscribe_items_subscribes_unlisted_and_unsubscribes_on_exit() -> None:
    runtime, stream = fake()
    since = SequenceToken(3, 1)
    async with stream.subscribe_items(Order, from_token=since):
        (added,) = runtime.added
        assert (added.item_type, added.from_token, added.listed) == (Order, since, False)
        assert added.describe == "subscribe_items()"
        assert runtime.unsubscribed == []
    assert runtime.unsubscribed == [(STREAM, added.handle.subscription_id)]


async def test_an_item_is_handled_once_the_loop_asks_for_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runtime, stream = fake()
    returned: list[int] = []
    got: list[tuple[Any, SequenceToken]] = []

    async def deliver(call: Callable[[Any, SequenceToken], Awaitable[Any]], n: int) -> None:
        await call(Order(n), SequenceToken(3, n))
        returned.append(n)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, stream.subscribe_items(Order) as items:
            call = runtime.added[0].call
            nursery.start_soon(deliver, call, 1)
            async for order, token in items:
                got.append((order, token))
                await trio.testing.wait_all_tasks_blocked()
                assert returned == list(range(1, order.id))  # this one: not yet handled
                if order.id == 2:
                    break
                nursery.start_soon(deliver, call, 2)
            await trio.testing.wait_all_tasks_blocked()
            assert returned == [1]
            # leaving the block normally finishes the item the loop broke out with
    assert got == [(Order(1), SequenceToken(3, 1)), (Order(2), SequenceToken(3, 2))]
    assert returned == [1, 2]


async def test_an_error_in_the_loop_body_fails_the_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runtime, stream = fake()
    failures: list[BaseException] = []

    async def deliver(call: Callable[[Any, SequenceToken], Awaitable[Any]]) -> None:
        try:
            await call(Order(1), SequenceToken(3, 1))
        except StreamError as exc:
            failures.append(exc)

    async def consume() -> None:
        async with stream.subscribe_items(Order) as items:
            nursery.start_soon(deliver, runtime.added[0].call)
            async for _ in items:
                raise KeyError("body")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with pytest.raises(KeyError, match="body"):
                await consume()
    (failure,) = failures
    assert str(failure) == "the subscriber failed on this item"
    assert isinstance(failure.__cause__, KeyError)
    assert len(runtime.unsubscribed) == 1


async def test_subscribe_items_that_cannot_subscribe_raises_and_leaves_nothing() -> None:
    runtime, stream = fake()
    runtime.refuse_subscriptions = True
    with pytest.raises(StreamError, match="cannot rewind"):
        async with stream.subscribe_items(Order):
            pytest.fail("the block must not run")  # pragma: no cover
    assert runtime.unsubscribed == []
