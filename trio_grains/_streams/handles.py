"""What user code holds of a stream: :class:`Stream`, subscription handles, item iterators.

Everything here calls back into a :class:`StreamRuntime` (the running
:class:`~trio_grains.StreamProvider` is the one there is) through its public methods,
and does no I/O of its own. This module imports the model and the core below it, never
the provider or the agent: the provider builds streams and handles with
:func:`new_stream` and :func:`bind_handle` (so their public constructors name no
private type, and a handle kept in grain state encodes without its runtime).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from .._ids import GrainId
from .model import EncodedItem, SequenceToken, StreamError, StreamId, partition_for

if TYPE_CHECKING:
    from .._serialization import Codec

__all__ = ["Stream", "StreamRuntime", "StreamSubscriptionHandle", "bind_handle", "new_stream"]


# --- the seam ----------------------------------------------------------------------------


class StreamRuntime(Protocol):
    """What :class:`Stream` and :class:`StreamSubscriptionHandle` need of the provider
    that made them (its public methods of the same names document each)."""

    #: the provider's partition count (``Stream.partition``)
    partitions: int
    #: encodes published items (``dumps``)
    codec: Codec

    def new_msg_id(self) -> str: ...

    def new_msg_ids(self, n: int) -> list[str]: ...

    async def publish_encoded(
        self, stream_id: StreamId, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]: ...

    async def subscribe(
        self,
        stream_id: StreamId,
        handler: Callable[..., Awaitable[Any]],
        *,
        from_token: SequenceToken | None = None,
    ) -> StreamSubscriptionHandle: ...

    async def add_subscription(
        self,
        stream_id: StreamId,
        call: Callable[[Any, SequenceToken], Awaitable[Any]],
        *,
        item_type: Any,
        describe: str,
        from_token: SequenceToken | None = None,
        listed: bool = True,
    ) -> StreamSubscriptionHandle: ...

    def unsubscribe(self, stream_id: StreamId, subscription_id: str) -> bool: ...

    def subscriptions(self, stream_id: StreamId) -> list[StreamSubscriptionHandle]: ...


def new_stream(stream_id: StreamId, runtime: StreamRuntime) -> Stream:
    """The :class:`Stream` *stream_id* of *runtime* (``provider.get_stream``)."""
    stream = Stream(stream_id)
    stream._runtime = runtime
    return stream


def bind_handle(
    handle: StreamSubscriptionHandle, runtime: StreamRuntime
) -> StreamSubscriptionHandle:
    """*handle*, bound to *runtime* so that ``handle.unsubscribe()`` works."""
    object.__setattr__(handle, "_runtime", runtime)  # a frozen value: set once, here
    return handle


# --- handles and iterators ---------------------------------------------------------------


@attrs.frozen
class StreamSubscriptionHandle:
    """An explicit subscription. Values: keep one in grain state, or find them again with
    ``await stream.get_subscriptions()``; ``await handle.unsubscribe()`` ends it.

    ``grain_id`` / ``method`` name the subscribed grain method (``None`` for a plain
    callable).
    """

    subscription_id: str
    stream_id: StreamId
    provider: str
    grain_id: GrainId | None = None
    method: str | None = None
    # init=False: not a constructor parameter (bind_handle sets it), and not encoded
    # with the handle when a grain keeps it in its state
    _runtime: StreamRuntime | None = attrs.field(default=None, init=False, eq=False, repr=False)

    async def unsubscribe(self) -> bool:
        """End the subscription; False if it had already ended."""
        if self._runtime is None:
            raise StreamError("this handle is not bound to a running stream provider")
        await trio.lowlevel.checkpoint()
        return self._runtime.unsubscribe(self.stream_id, self.subscription_id)


@attrs.define(eq=False)
class _Handoff:
    value: Any
    token: SequenceToken
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


class _ItemIterator:
    """What ``stream.subscribe_items()`` yields: ``async for item, token in items``.

    An item counts as handled when the loop asks for the next one (or leaves normally).
    """

    def __init__(self, receive: trio.MemoryReceiveChannel[_Handoff]) -> None:
        self._receive = receive
        self._current: _Handoff | None = None

    def _finish(self, error: BaseException | None) -> None:
        if self._current is not None:
            self._current.error = error
            self._current.done.set()
            self._current = None

    def __aiter__(self) -> _ItemIterator:
        return self

    async def __anext__(self) -> tuple[Any, SequenceToken]:
        self._finish(None)
        try:
            handoff = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._current = handoff
        return handoff.value, handoff.token


# --- the public face ---------------------------------------------------------------------


@attrs.define(eq=False)
class Stream:
    """One stream of a provider: ``provider.get_stream(namespace, key)``. Cheap, no I/O."""

    stream_id: StreamId
    # init=False: the provider binds it (new_stream); the public constructor names no
    # private type
    _runtime: StreamRuntime = attrs.field(init=False, repr=False)

    @property
    def partition(self) -> int:
        return partition_for(self.stream_id, self._runtime.partitions)

    async def publish(
        self, item: Any, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> SequenceToken:
        """Encode *item* with the silo's converter and append it; return its token.

        *msg_id* (default: a fresh unique id) deduplicates: publishing again with the same
        id within the provider's window stores nothing new (use it when retrying a publish).
        """
        runtime = self._runtime
        data = runtime.codec.dumps(item)
        encoded = EncodedItem(data, msg_id or runtime.new_msg_id(), headers or {})
        (token,) = await runtime.publish_encoded(self.stream_id, [encoded])
        return token

    async def publish_batch(
        self, items: Sequence[Any], *, msg_ids: Sequence[str] | None = None
    ) -> list[SequenceToken]:
        """Publish *items* in order, in one adapter call; return their tokens."""
        if msg_ids is not None and len(msg_ids) != len(items):
            raise ValueError(f"{len(items)} items but {len(msg_ids)} msg_ids")
        runtime = self._runtime
        ids = list(msg_ids) if msg_ids is not None else runtime.new_msg_ids(len(items))
        dumps = runtime.codec.dumps
        encoded = [EncodedItem(dumps(item), mid) for item, mid in zip(items, ids, strict=True)]
        return await runtime.publish_encoded(self.stream_id, encoded)

    async def subscribe(
        self,
        handler: Callable[..., Awaitable[Any]],
        *,
        from_token: SequenceToken | None = None,
    ) -> StreamSubscriptionHandle:
        """Call ``await handler(item, token)`` for every item of this stream.

        *handler* is a grain method (``self.on_price`` inside a grain): the subscription
        belongs to the grain, not the activation, so it survives deactivation (the next
        item activates the grain again); subscribing the same method twice returns the
        first handle. Or any async callable, for as long as the silo runs.
        *from_token* first replays stored items from that token on (inclusive), where the
        provider supports it.
        """
        return await self._runtime.subscribe(self.stream_id, handler, from_token=from_token)

    @contextlib.asynccontextmanager
    async def subscribe_items(
        self, item_type: Any = Any, *, from_token: SequenceToken | None = None
    ) -> AsyncIterator[AsyncIterator[tuple[Any, SequenceToken]]]:
        """Iterate this stream's items from plain Trio code::

            async with stream.subscribe_items(Order) as items:
                async for order, token in items:
                    ...

        Each item is acked once the loop body finished with it (the loop asks for the
        next one, or leaves normally); the stream waits while the body runs.
        """
        send, receive = trio.open_memory_channel[_Handoff](0)

        async def deliver(value: Any, token: SequenceToken) -> None:
            handoff = _Handoff(value, token)
            await send.send(handoff)
            await handoff.done.wait()
            if handoff.error is not None:
                raise StreamError("the subscriber failed on this item") from handoff.error

        try:
            handle = await self._runtime.add_subscription(
                self.stream_id,
                deliver,
                item_type=item_type,
                describe="subscribe_items()",
                from_token=from_token,
                listed=False,
            )
        except BaseException:
            send.close()
            receive.close()
            raise
        iterator = _ItemIterator(receive)
        try:
            yield iterator
        except BaseException as exc:
            iterator._finish(exc)
            raise
        else:
            iterator._finish(None)
        finally:
            self._runtime.unsubscribe(self.stream_id, handle.subscription_id)
            receive.close()
            send.close()

    async def get_subscriptions(self) -> list[StreamSubscriptionHandle]:
        """The explicit subscriptions of this stream (``subscribe_items`` ones excluded)."""
        await trio.lowlevel.checkpoint()
        return self._runtime.subscriptions(self.stream_id)
