"""Subscriptions: messages delivered into a bounded Trio memory channel.

Backpressure. Each subscription buffers at most ``max_pending`` messages. What happens
when a slow consumer lets it fill up is the subscription's ``slow_consumer`` policy:

* ``"block"`` (the default): the connection's reader waits until the consumer takes a
  message. Nothing is lost, and TCP flow control pushes back to the server, but every
  other subscription and every request reply of the connection waits too, and the server
  disconnects a client that stays blocked past its write deadline (``-ERR 'Slow
  Consumer'``; we then reconnect and resubscribe). Never await a request on the same
  connection from the consumer of a full ``"block"`` subscription.
* ``"drop"``: the message is dropped and counted (:meth:`Subscription.statistics`,
  ``dropped``), as nats-py and the Go client do. Core NATS is at-most-once anyway.

A subscription calls back into its connection's private members (``_fatal_error``,
``_draining``, ``_unsubscribe``, ``_drain_subscription``): they are one component of the
client package, changed together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NoReturn

import attrs
import trio

from ._exceptions import ConnectionClosedError
from ._msg import Msg

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["SlowConsumerPolicy", "Subscription", "SubscriptionStatistics"]

SlowConsumerPolicy = Literal["block", "drop"]
_YIELD_EVERY = 64


@attrs.frozen
class SubscriptionStatistics:
    """A snapshot of one subscription's counters."""

    subject: str
    queue: str | None
    delivered: int  # messages put into the buffer
    dropped: int  # messages dropped because the buffer was full ("drop" policy)
    pending: int  # messages in the buffer, not yet taken by the consumer
    max_pending: int


class Subscription:
    """Interest in a subject; iterate with ``async for msg in sub``.

    Iteration ends after :meth:`unsubscribe` (or :meth:`drain`, or the connection's
    drain) once the buffered messages are consumed; it raises
    :class:`ConnectionClosedError` if the connection was lost for good.
    """

    def __init__(
        self,
        conn: Connection,
        sid: int,
        subject: str,
        queue: str | None,
        max_pending: int,
        slow_consumer: SlowConsumerPolicy,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if slow_consumer not in ("block", "drop"):
            raise ValueError("slow_consumer must be 'block' or 'drop'")
        self._conn = conn
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self._max_pending = max_pending
        self._block = slow_consumer == "block"
        self._send, self._recv = trio.open_memory_channel[Msg](max_pending)
        self._delivered = 0
        self._dropped = 0
        self._active = True
        self._streak = 0

    def __repr__(self) -> str:
        return f"<Subscription sid={self.sid} subject={self.subject!r} queue={self.queue!r}>"

    # --- the reader's side -----------------------------------------------------------

    async def _deliver(self, msg: Msg) -> None:
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            if not self._block:
                self._dropped += 1
                return
            try:
                await self._send.send(msg)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        self._delivered += 1

    async def _wait_consumed(self) -> None:
        # Polling (drain only): an event set by the consumer would cost every __anext__,
        # and would never fire for a consumer that stopped iterating at the last message.
        while self._recv.statistics().current_buffer_used:  # noqa: ASYNC110
            await trio.sleep(0.005)

    def _close(self) -> None:
        self._active = False
        self._send.close()

    # --- the consumer's side ---------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Msg:
        # A buffered message is returned without a trip through the scheduler (that trip
        # would let a busy consumer handle one message per scheduler batch): this is
        # always a cancellation point, and a schedule point every _YIELD_EVERY messages
        # or when it has to wait.
        try:
            msg = self._recv.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            self._raise_end()
        else:
            self._streak += 1
            if self._streak >= _YIELD_EVERY:
                self._streak = 0
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            return msg
        self._streak = 0
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            self._raise_end()

    def _raise_end(self) -> NoReturn:
        error = self._conn._fatal_error
        if error is not None and not self._conn._draining:
            raise ConnectionClosedError(
                f"the connection was lost, so subscription {self.subject!r} ended: {error}"
            ) from error
        raise StopAsyncIteration

    async def next_msg(self) -> Msg:
        """The next message (waits for it; bound the wait with a cancel scope)."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConnectionClosedError(
                f"subscription {self.subject!r} has ended (unsubscribed or drained)"
            ) from None

    async def unsubscribe(self) -> None:
        """Stop the subscription; messages already buffered can still be iterated."""
        await self._conn._unsubscribe(self)

    async def drain(self) -> None:
        """Unsubscribe, wait until every message in flight arrived and was consumed."""
        await self._conn._drain_subscription(self)

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            subject=self.subject,
            queue=self.queue,
            delivered=self._delivered,
            dropped=self._dropped,
            pending=self._recv.statistics().current_buffer_used,
            max_pending=self._max_pending,
        )
