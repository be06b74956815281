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

Two kinds: a :class:`Subscription` hands out :class:`Msg` values one by one; a
:class:`PayloadSubscription` (``Connection.subscribe_payloads``) hands out only the
payloads, as lists of everything that arrived since the last take. The second costs no
object per message and one wake-up of its consumer per read from the socket, not per
message: for a consumer of many small messages that needs neither subjects nor headers
(the cluster transport).

A subscription calls back into its connection's private members (``_fatal_error``,
``_draining``, ``_unsubscribe``, ``_drain_subscription``): they are one component of the
client package, changed together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NoReturn

import attrs
import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from ._exceptions import ConnectionClosedError
from ._msg import Msg

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["PayloadSubscription", "SlowConsumerPolicy", "Subscription", "SubscriptionStatistics"]

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


class _Interest:
    """What both kinds of subscription share: the server-side interest and its counters."""

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
        self._delivered = 0
        self._dropped = 0
        self._active = True

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} sid={self.sid} subject={self.subject!r} queue={self.queue!r}>"
        )

    # --- the reader's side (the connection's parser calls these) -----------------------

    def _deliver_nowait(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        """Buffer a message; ``False`` only when the buffer is full and the policy is
        "block" (the reader then awaits :meth:`_deliver`)."""
        raise NotImplementedError

    async def _deliver(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        """Buffer a message, waiting for room."""
        raise NotImplementedError

    def _pending(self) -> int:
        raise NotImplementedError

    async def _wait_consumed(self) -> None:
        # Polling (drain only): an event set by the consumer would cost every take, and
        # would never fire for a consumer that stopped taking at the last message.
        while self._pending():  # noqa: ASYNC110
            await trio.sleep(0.005)

    def _close(self) -> None:
        self._active = False

    def _raise_end(self) -> NoReturn:
        error = self._conn._fatal_error
        if error is not None and not self._conn._draining:
            raise ConnectionClosedError(
                f"the connection was lost, so subscription {self.subject!r} ended: {error}"
            ) from error
        raise StopAsyncIteration

    # --- the consumer's side ---------------------------------------------------------

    async def unsubscribe(self) -> None:
        """Stop the subscription; messages already buffered can still be taken."""
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
            pending=self._pending(),
            max_pending=self._max_pending,
        )


class Subscription(_Interest):
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
        super().__init__(conn, sid, subject, queue, max_pending, slow_consumer)
        self._send, self._recv = trio.open_memory_channel[Msg](max_pending)
        self._streak = 0

    # --- the reader's side -----------------------------------------------------------

    def _deliver_nowait(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        try:
            self._send.send_nowait(self._conn._make_msg(subject, reply, data, headers))
        except trio.WouldBlock:
            if self._block:
                return False
            self._dropped += 1
            return True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True
        self._delivered += 1
        return True

    async def _deliver(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        try:
            await self._send.send(self._conn._make_msg(subject, reply, data, headers))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        self._delivered += 1

    def _pending(self) -> int:
        return self._recv.statistics().current_buffer_used

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

    async def next_msg(self) -> Msg:
        """The next message (waits for it; bound the wait with a cancel scope)."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConnectionClosedError(
                f"subscription {self.subject!r} has ended (unsubscribed or drained)"
            ) from None


class PayloadSubscription(_Interest):
    """Interest in a subject whose consumer takes payloads only, in batches: get one with
    :meth:`~trio_grains_nats.client.Connection.subscribe_payloads`, take with
    :meth:`next_batch`.

    No :class:`Msg` is made (subjects, reply subjects and headers are dropped), and the
    consumer wakes once per read from the socket, however many messages it brought. One
    task takes at a time. ``max_pending`` and ``slow_consumer`` work as for
    :class:`Subscription`.
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
        super().__init__(conn, sid, subject, queue, max_pending, slow_consumer)
        self._buf: list[bytes] = []
        self._consumer: Task | None = None  # parked in next_batch, for the reader to wake
        self._room = trio.lowlevel.ParkingLot()  # the reader, while the buffer is full
        self._full_batch = False

    # --- the reader's side -----------------------------------------------------------

    def _deliver_nowait(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        if not self._active:
            return True
        buf = self._buf
        if len(buf) >= self._max_pending:
            if self._block:
                return False
            self._dropped += 1
            return True
        buf.append(data)
        self._delivered += 1
        if self._consumer is not None:
            task, self._consumer = self._consumer, None
            reschedule(task)
        return True

    async def _deliver(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        while self._active and len(self._buf) >= self._max_pending:
            await self._room.park()
        self._deliver_nowait(subject, reply, data, headers)

    def _pending(self) -> int:
        return len(self._buf)

    def _close(self) -> None:
        self._active = False
        if self._consumer is not None:
            task, self._consumer = self._consumer, None
            reschedule(task)
        self._room.unpark_all()

    # --- the consumer's side ---------------------------------------------------------

    async def next_batch(self, limit: int = 1024) -> list[bytes]:
        """The payloads that arrived since the last take, oldest first (at most *limit*);
        waits for one if there are none.

        A cancellation point that loses nothing, and a schedule point when it waits or
        after a batch of *limit*. Raises :class:`ConnectionClosedError` once the
        subscription ended (unsubscribed, drained, or the connection was lost) and the
        buffered payloads were taken.
        """
        while True:
            if self._buf:
                if self._full_batch:  # the last take was full: let other tasks run first
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.checkpoint_if_cancelled()
                buf = self._buf
                if len(buf) <= limit:
                    self._buf = []
                    batch = buf
                else:
                    batch = buf[:limit]
                    del buf[:limit]
                self._full_batch = len(batch) == limit
                if self._room:
                    self._room.unpark_all()
                return batch
            self._full_batch = False
            if not self._active:
                await trio.lowlevel.checkpoint()
                try:
                    self._raise_end()
                except StopAsyncIteration:
                    raise ConnectionClosedError(
                        f"subscription {self.subject!r} has ended (unsubscribed or drained)"
                    ) from None
            if self._consumer is not None:
                raise trio.BusyResourceError("another task is taking from this subscription")
            self._consumer = current_task()

            def abort(_: Any) -> Abort:
                self._consumer = None
                return Abort.SUCCEEDED

            await wait_task_rescheduled(abort)
