"""The pulling agent of one partition: receive, deliver in key order, retry, dead-letter, ack.

Holds :class:`PartitionAgent`, the records of a subscriber it delivers to (:class:`Target`,
:class:`Subscription`), the seam it runs against (:class:`AgentHost`, and its part
:class:`DeliveryHost` that a single delivery needs), and the dead-letter encoding. It
imports the model and the core below it (exceptions, tracing, the codec's type), never
the provider or the handles: the provider builds one :class:`AgentHost` per owned
partition and hands it to the agent, as Orleans' ``PersistentStreamPullingManager``
creates each pulling agent against the narrow ``IQueueAdapterReceiver`` of its queue.

A :class:`PartitionAgent` holds at most ``max_in_flight`` items (the window is the
backpressure), queues them per stream key, and runs the keys with items on at most
``max_concurrent_keys`` worker tasks, one key per worker at a time. A worker hands an
item to every subscriber (:meth:`PartitionAgent.process`), retrying failed subscribers in
place with backoff, then acks it, or after ``max_deliveries`` attempts publishes a
:class:`~trio_grains._streams.model.DeadLetter` and terminates it. A
:class:`~trio_grains.RejectedItemError` or an undecodable item is dead-lettered at once; an
unavailable silo (failover) is retried without counting.

Dead letters trust nothing about the item that failed, because an item is whatever
anyone allowed to publish on the stream put there:

* its msg_id is ``dead-letter:<partition>:<sequence>`` (:func:`dead_letter_msg_id`), not
  derived from the item's own msg_id: items published without one (an independent
  client's) would all share a dead-letter id, and the adapter's deduplication would keep
  one letter of many. The token is unique per stored item and the same when the item
  comes back, so a dead letter published again after a failed attempt is still one;
* it always fits the adapter's ``max_item_size`` (:func:`encode_dead_letter`): a letter
  that would not is cut to a reference (no data, the error cut). Otherwise its publish
  would fail every time, and the item would come back forever;
* an item the adapter could not read (``ReceivedItem.unreadable``) is delivered to
  nobody and dead-lettered at once; it is counted, and logged for the 1st, 10th, 100th
  and every 1000th of them, so that a flood of them cannot flood the log.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from .._exceptions import RejectedItemError, SerializationError, SiloUnavailableError
from .._ids import GrainId
from .._tracing import Attributes, SpanKind, stream_attributes
from .model import (
    DeadLetter,
    EncodedItem,
    ReceivedItem,
    SequenceToken,
    StreamId,
    StreamOptions,
)

if TYPE_CHECKING:
    from .._serialization import Codec
    from .._tracing import Tracer

__all__ = [
    "AgentHost",
    "DeliveryHost",
    "PartitionAgent",
    "Subscription",
    "Target",
    "call_target",
    "deliver_with_retries",
    "dead_letter_msg_id",
    "encode_dead_letter",
]

log = logging.getLogger("trio_grains.streams")

DEAD_LETTER_HEADROOM = 1024
"""Bytes of the adapter's ``max_item_size`` a dead letter leaves free: for the trace
context headers the runtime adds to a publish when tracing is on."""

ERROR_HEADER_CHARS = 500
"""Characters of the error kept in a dead letter's ``error`` header (one line)."""

REFERENCE_MSG_ID_CHARS = 200
"""Characters of the item's msg_id kept in a dead letter cut to a reference."""


# --- what the agent delivers to ----------------------------------------------------------


@attrs.define(eq=False)
class Target:
    """One subscriber of an item: how to call it and how to decode for it.

    *key* tells the subscribers of one item apart, stable across its retries (handlers
    that returned are not called again); *describe* names it in logs and dead letters;
    *call* is ``await call(value, token)``. An explicit subscriber has its
    :class:`Subscription`; an implicit one (a grain class's) has none.
    """

    key: Hashable
    describe: str
    item_type: Any
    call: Callable[[Any, SequenceToken], Awaitable[Any]]
    subscription: Subscription | None = None


@attrs.define(eq=False)
class Subscription:
    """An explicit subscription, as the provider keeps it and the agent reads it.

    *listed*: returned by ``stream.get_subscriptions()`` (not ``subscribe_items()`` ones).
    While a rewind replays history, *replaying* is set: live items wait for it, then skip
    what it sent (sequences up to *replayed_upto*). *active* turns false on unsubscribe.
    """

    id: str
    stream_id: StreamId
    target: Target
    grain_id: GrainId | None = None
    method: str | None = None
    listed: bool = True
    replaying: trio.Event | None = None
    replayed_upto: int = -1
    active: bool = True


# --- the seam: what an agent needs of the provider that runs it --------------------------


class DeliveryHost(Protocol):
    """What delivering one item to one :class:`Target` needs (:func:`call_target`,
    :func:`deliver_with_retries`); the provider is one, for its rewinds."""

    #: the provider's name (logs, span attributes)
    name: str
    options: StreamOptions
    #: decodes items for their targets (``loads``), encodes dead letters (``dumps``)
    codec: Codec
    #: with tracing on: a delivery is a consumer span continuing the publisher's trace
    tracer: Tracer | None
    #: the provider's counters (``delivered``, ``failed``, ...: see ``statistics()``)
    counts: collections.Counter[str]


class AgentHost(DeliveryHost, Protocol):
    """What a :class:`PartitionAgent` needs, for its one partition: the adapter's calls
    bound to it, the subscribers of an item, and publishing (of dead letters).

    The adapter's calls keep the :class:`~trio_grains.StreamAdapter` contract (the agent
    calls ``receive`` from one task, and cancels it to stop). They are declared as
    callables returning awaitables so that a host can hand out the adapter's own bound
    methods (``functools.partial(adapter.receive, partition)``): no extra frame per call.
    """

    partition: int

    @property
    def progress_interval(self) -> float | None:
        """The adapter's :attr:`~trio_grains.StreamAdapter.progress_interval`."""

    @property
    def max_item_size(self) -> int | None:
        """The adapter's :attr:`~trio_grains.StreamAdapter.max_item_size` (dead letters
        are kept below it)."""

    def receive(self, max_items: int, /) -> Awaitable[list[ReceivedItem]]:
        """``adapter.receive(partition, max_items)``."""

    def ack(self, items: Sequence[ReceivedItem], /) -> Awaitable[None]:
        """``adapter.ack(items)``."""

    def nak(self, item: ReceivedItem, delay: float, /) -> Awaitable[None]:
        """``adapter.nak(item, delay)``."""

    def term(self, item: ReceivedItem, reason: str, /) -> Awaitable[None]:
        """``adapter.term(item, reason)``."""

    def in_progress(self, items: Sequence[ReceivedItem], /) -> Awaitable[None]:
        """``adapter.in_progress(items)``."""

    def targets(self, stream_id: StreamId, /) -> Iterable[Target]:
        """The subscribers of an item of *stream_id*: implicit ones, then explicit ones.
        Called once per delivery round of an item: keep it cheap (cache, no copies)."""

    def publish_encoded(
        self, stream_id: StreamId, items: list[EncodedItem], /
    ) -> Awaitable[list[SequenceToken]]:
        """Publish encoded *items* on *stream_id* (any partition): the dead letters."""


def _describe_error(exc: BaseException) -> str:
    """``module.Type: message``, without notes: a remote grain's exception carries its
    traceback as a note, and a dead letter's text must not depend on where it ran."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    message = str(exc)
    return f"{name}: {message}" if message else name


def _cut(text: str, length: int) -> str:
    """*text* if it has at most *length* characters, else its start and ``...`` (``""``
    when not even that fits)."""
    if len(text) <= length:
        return text
    return text[: length - 3] + "..." if length > 3 else ""


def _clean(text: str) -> str:
    """*text* encodable as UTF-8 (an exception's message may hold lone surrogates)."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_msg_id(item: ReceivedItem) -> str:
    """The msg_id of *item*'s dead letter: ``dead-letter:<partition>:<sequence>``."""
    return f"dead-letter:{item.token.partition}:{item.token.sequence}"


def encode_dead_letter(
    codec: Codec, item: ReceivedItem, attempts: int, error: str, limit: int | None
) -> tuple[EncodedItem, bool] | None:
    """*item*'s dead letter, encoded, and whether it had to be cut to a reference to fit
    *limit* (bytes, as :meth:`EncodedItem.size` counts them; ``None``: no limit).

    The reference keeps the item's stream id, token, size and (cut) msg_id, and as much
    of the error as fits. ``None`` when not even a reference with no error fits (a limit
    of a few hundred bytes)."""
    error, msg_id = _clean(error), _clean(item.msg_id)
    letter_id = dead_letter_msg_id(item)
    # A header is one line: an error raised in a grain on another silo carries its
    # traceback there as a note (the letter's body keeps all of it).
    header = _cut(" ".join(error.split()), ERROR_HEADER_CHARS)
    letter = DeadLetter(
        item.stream_id, item.token, msg_id, item.data, attempts, error, size=len(item.data)
    )
    encoded = EncodedItem(codec.dumps(letter), letter_id, {"error": header})
    if limit is None or encoded.size() <= limit:
        return encoded, False
    reference = attrs.evolve(
        letter, msg_id=_cut(msg_id, REFERENCE_MSG_ID_CHARS), data=b"", truncated=True
    )

    def cut_to(length: int) -> EncodedItem:
        text = _cut(error, length)
        data = codec.dumps(attrs.evolve(reference, error=text))
        return EncodedItem(data, letter_id, {"error": _cut(header, length)})

    if cut_to(0).size() > limit:
        return None
    low, high = 0, len(error)  # the longest error that fits: low fits, high + 1 does not
    while low < high:
        middle = (low + high + 1) // 2
        if cut_to(middle).size() <= limit:
            low = middle
        else:
            high = middle - 1
    return cut_to(low), True


_FATAL = (SerializationError, RejectedItemError)
"""Errors that no retry can cure: the item is dead-lettered at once."""

_TRANSIENT = (SiloUnavailableError,)
"""Errors of the cluster, not of the item (its grain's silo died or is stopping): retried
with backoff without using up ``max_deliveries``, so a failover never dead-letters good
items."""


async def call_target(host: DeliveryHost, target: Target, item: ReceivedItem) -> None:
    """Decode *item* for *target* and call it once (with tracing on: in a span that
    continues the publisher's trace, from the item's headers)."""
    tracer = host.tracer
    if tracer is None:
        value = host.codec.loads(item.data, target.item_type)
        await target.call(value, item.token)
        return
    attributes: Attributes = {
        **stream_attributes(host.name, item.stream_id),
        "messaging.message.id": item.msg_id,
        "messaging.delivery_attempt": item.attempt,
        "trio_grains.stream_token": str(item.token),
        "trio_grains.subscriber": target.describe,
    }
    parent = tracer.extract(item.headers) if item.headers else None
    name = f"process {item.stream_id.namespace}"
    with tracer.span(name, SpanKind.CONSUMER, attributes, parent=parent, root=parent is None):
        value = host.codec.loads(item.data, target.item_type)
        await target.call(value, item.token)


async def deliver_with_retries(
    host: DeliveryHost, target: Target, item: ReceivedItem
) -> str | None:
    """Call *target* with *item* until it returns or ``max_deliveries`` attempts failed
    (a :class:`SerializationError` or :class:`RejectedItemError` is not retried; an
    unavailable silo does not count as an attempt); the last error, or ``None``."""
    options = host.options
    attempt = 1
    while True:
        try:
            await call_target(host, target, item)
            host.counts["delivered"] += 1
            return None
        except Exception as exc:
            host.counts["failed"] += 1
            error = f"{target.describe}: {_describe_error(exc)}"
            transient = isinstance(exc, _TRANSIENT)
            if isinstance(exc, _FATAL) or (not transient and attempt >= options.max_deliveries):
                return error
        await trio.sleep(options.retry_delay(attempt))
        if not transient:
            attempt += 1


class PartitionAgent:
    """The pulling agent of one partition, run against *host* (see :class:`AgentHost`).

    ``run()`` pulls until ``stop()``; then it lets running keys finish for
    ``drain_timeout`` seconds, sends the acks due and gives every item still held back
    (``nak(item, 0)``). ``held`` (items received, not yet settled) and ``lag`` are read
    by the provider's statistics.

    How it spends the window of ``max_in_flight`` items (*free* counts what is left):

    * it asks for ``min(batch_size, free)`` items once a refill's worth of slots is free
      (``batch_size``, or half the window if that is smaller), then calls ``receive``
      for what is still owed of that ask until it is filled, and only then asks again.
      So an adapter that turns asks into requests (JetStream: a pull request for
      ``max_items``) makes one per ask, each for a refill or more: a saturated agent
      does not pull one item each time one is acked, and what an adapter has on its way
      always fits the window, and is taken as soon as it comes. The window may stay up
      to a refill short of full.
    * it asks only while fewer than ``batch_size + max_concurrent_keys`` keys wait for a
      worker. Beyond that, more items would not be handled sooner, only wait in the silo
      instead of in the stream: there, an item that waits longer than the adapter's ack
      wait needs renewals (a message each), and a partition handed over gives them all
      back. With every key holding one item (orders), a partition holds its running
      keys' items and about ``2 * batch_size + max_concurrent_keys`` more; the rest of
      the window is used when keys have many items each, so that a key whose items queue
      up does not hold back the keys behind it.
    * a key with items is run by one of at most ``max_concurrent_keys`` worker tasks,
      which takes the next waiting key when its own has no items left (a task per key
      would cost a task spawn per item when every item has a key of its own, as orders
      do). A key's items go through one worker in order; no two workers run one key.
    * items held for a while are renewed (``in_progress``) every
      ``progress_interval``, not all held items: the agent looks every half interval,
      and renews the items it saw two looks ago (held at least one interval, at most
      one and a half without a renewal). Items handled within an interval, which is
      nearly all of them, cost no message.
    """

    def __init__(self, host: AgentHost) -> None:
        self.host = host
        self.partition = host.partition
        self.options = host.options
        self.held: dict[int, ReceivedItem] = {}
        #: per key with items held: its items in order (the first one is being handled,
        #: or waits for a worker)
        self.queues: dict[StreamId, collections.deque[ReceivedItem]] = {}
        #: keys with items and no worker, in the order their first item came
        self._ready: collections.deque[tuple[StreamId, collections.deque[ReceivedItem]]] = (
            collections.deque()
        )
        self._workers = 0  # worker tasks started (they run until the agent stops)
        self._idle_workers = trio.lowlevel.ParkingLot()
        self.free = self.options.max_in_flight  # slots of the window not held
        self.overdraft = 0  # items held beyond the window (an adapter returned too many)
        #: free slots a receive waits for
        self.refill = max(1, min(self.options.batch_size, self.options.max_in_flight // 2))
        #: keys waiting for a worker that stop the asking
        self.enough_waiting = self.options.batch_size + self.options.max_concurrent_keys
        self._room = trio.lowlevel.ParkingLot()  # the puller, waiting for free slots
        self.lag: int | None = None
        self.stopping = False
        self.receiving = trio.CancelScope()
        self._drained = trio.Event()  # stopping, and no key has items left
        self.done = trio.Event()
        #: items whose handlers returned, waiting for the acker's next adapter.ack call
        self.acks: list[ReceivedItem] = []
        self.acks_due = trio.Event()

    # -- lifetime ---------------------------------------------------------------------------

    async def run(self) -> None:
        interval = self.host.progress_interval
        try:
            async with trio.open_nursery() as workers:
                workers.start_soon(self._send_acks)
                if interval:
                    workers.start_soon(self._keep_alive, interval)
                with self.receiving:
                    await self._pull(workers)
                # Keys no worker has started are not started now: their items go back.
                queues = self.queues
                for stream_id, queue in self._ready:
                    if queues.get(stream_id) is queue:
                        del queues[stream_id]
                self._ready.clear()
                if queues:
                    with trio.move_on_after(self.options.drain_timeout):
                        await self._drained.wait()
                workers.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if self.acks:  # handled items are acked, not given back
                    await self._ack_batch(self._take_acks())
                for item in sorted(self.held.values(), key=lambda i: i.token):
                    await self.give_back(item, 0.0)
            self.done.set()

    async def stop(self) -> None:
        self.stopping = True
        self.receiving.cancel()
        await self.done.wait()

    async def _pull(self, workers: trio.Nursery) -> None:
        host = self.host
        batch_size = self.options.batch_size
        max_workers = self.options.max_concurrent_keys
        held, queues, ready = self.held, self.queues, self._ready
        failures = 0
        owed = 0  # items of the last ask not received yet (never more than free)
        while True:
            if not owed:
                while self.free < self.refill or len(ready) >= self.enough_waiting:
                    await self._room.park()
                owed = min(batch_size, self.free)
            try:
                batch = await host.receive(owed)
                failures = 0
            except Exception:
                owed = 0
                failures += 1
                log.exception("receive from partition %d failed", self.partition)
                await trio.sleep(min(self.options.max_backoff, 0.1 * 2**failures))
                continue
            if not batch:  # not what the contract says: do not spin on it
                await trio.lowlevel.checkpoint()
                continue
            # No checkpoint from here on: a cancellation must not lose received items.
            owed = max(0, owed - len(batch))
            for item in batch:
                if self.free:
                    self.free -= 1
                else:  # the adapter returned more than asked for
                    self.overdraft += 1
                seq = item.token.sequence
                if seq in held:  # the adapter redelivered what we still work on
                    self._release_slot()
                    continue
                held[seq] = item
                if item.attempt > 1:
                    host.counts["redelivered"] += 1
                queue = queues.get(item.stream_id)
                if queue is None:
                    queue = queues[item.stream_id] = collections.deque()
                    ready.append((item.stream_id, queue))
                queue.append(item)
            self.lag = batch[-1].pending
            if ready:
                waiting = len(ready) - len(self._idle_workers.unpark(count=len(ready)))
                while waiting > 0 and self._workers < max_workers:
                    workers.start_soon(self._work)
                    self._workers += 1
                    waiting -= 1

    async def _work(self) -> None:
        """A worker: runs the waiting keys one after the other, each until it has no items."""
        ready, queues = self._ready, self.queues
        while True:
            while not ready:
                await self._idle_workers.park()
            stream_id, queue = ready.popleft()
            if self._room and len(ready) < self.enough_waiting and self.free >= self.refill:
                self._room.unpark_all()
            try:
                while queue and not self.stopping:
                    await self.process(queue[0])
                    queue.popleft()
            finally:
                if queues.get(stream_id) is queue and (not queue or self.stopping):
                    del queues[stream_id]
                if self.stopping and not queues:
                    self._drained.set()

    async def _keep_alive(self, interval: float) -> None:
        """Renew the items held for a while: every *interval* / 2, those seen held two
        looks ago (or renewed then) and held still."""
        seen: dict[int, int] = {}  # sequence -> the look that saw it first, or renewed it
        look = 0
        while True:
            await trio.sleep(interval / 2)
            look += 1
            due: list[ReceivedItem] = []
            now: dict[int, int] = {}
            for seq, item in self.held.items():
                since = seen.get(seq, look)
                if look - since >= 2:
                    due.append(item)
                    since = look
                now[seq] = since
            seen = now
            if due:
                try:
                    await self.host.in_progress(due)
                except Exception:
                    log.exception("in_progress on partition %d failed", self.partition)

    # -- delivery ---------------------------------------------------------------------------

    async def process(self, item: ReceivedItem) -> None:
        """Deliver *item* to every subscriber, retrying; then ack or dead-letter it."""
        host = self.host
        counts = host.counts
        if item.unreadable:
            counts["unreadable"] += 1
            seen = counts["unreadable"]
            if seen in (1, 10, 100) or seen % 1000 == 0:
                log.warning(
                    "stream item %s is unreadable, dead-lettered without delivery (%d so far "
                    "in stream provider %r; logged for the 1st, 10th, 100th, every 1000th): %s",
                    item.token,
                    seen,
                    host.name,
                    item.unreadable,
                )
            await self._dead_letter(item, 0, item.unreadable, quiet=True)
            return
        done: set[Hashable] = set()
        attempt = max(1, item.attempt)
        waits = 0  # retries that did not count: the cluster's failures, not the item's
        while True:
            errors: list[str] = []
            fatal = False
            transient = True  # every failure so far is the cluster's, not the item's
            for target in host.targets(item.stream_id):
                if target.key in done:
                    continue
                sub = target.subscription
                if sub is not None:
                    if sub.replaying is not None:
                        await sub.replaying.wait()
                    if not sub.active or item.token.sequence <= sub.replayed_upto:
                        continue
                try:
                    await call_target(host, target, item)
                except Exception as exc:
                    if sub is not None and not sub.active:
                        continue  # it unsubscribed meanwhile
                    counts["failed"] += 1
                    errors.append(f"{target.describe}: {_describe_error(exc)}")
                    fatal = fatal or isinstance(exc, _FATAL)
                    transient = transient and isinstance(exc, _TRANSIENT)
                    log.debug("stream item %s failed in %s", item.token, target.describe)
                else:
                    counts["delivered"] += 1
                    done.add(target.key)
            if not errors:
                self.ack(item)
                return
            if fatal or (not transient and attempt >= self.options.max_deliveries):
                await self._dead_letter(item, attempt, "; ".join(errors))
                return
            if transient:
                waits += 1
                if waits in (1, 10) or waits % 100 == 0:  # visible, not a line per retry
                    log.warning(
                        "stream item %s of %s waits for the cluster (retry %d, not counted "
                        "against max_deliveries): %s",
                        item.token,
                        item.stream_id,
                        waits,
                        "; ".join(errors),
                    )
            await trio.sleep(self.options.retry_delay(attempt))
            counts["redelivered"] += 1
            if not transient:
                attempt += 1

    async def _dead_letter(
        self, item: ReceivedItem, attempts: int, error: str, *, quiet: bool = False
    ) -> None:
        if not quiet:
            log.warning(
                "stream item %s of %s failed %d times; dead-lettered: %s",
                item.token,
                item.stream_id,
                attempts,
                error,
            )
        host = self.host
        namespace = self.options.dead_letter_namespace
        if namespace and item.stream_id.namespace != namespace:
            max_item_size = host.max_item_size
            limit = None if max_item_size is None else max_item_size - DEAD_LETTER_HEADROOM
            encoded = encode_dead_letter(host.codec, item, attempts, error, limit)
            if encoded is None:
                # Nothing to publish that fits: the log line is the dead letter.
                log.error(
                    "the dead letter of stream item %s of %s (msg_id %.200r, %d bytes) does "
                    "not fit the provider's max_item_size (%s bytes) even without its data; "
                    "terminated, not published: %s",
                    item.token,
                    item.stream_id,
                    item.msg_id,
                    len(item.data),
                    max_item_size,
                    error,
                )
            else:
                letter, truncated = encoded
                try:
                    await host.publish_encoded(StreamId(namespace, item.stream_id.key), [letter])
                except Exception:
                    log.exception("dead letter of %s not published; it comes back", item.token)
                    await self.give_back(item, self.options.retry_delay(max(1, attempts)))
                    return
                if truncated:
                    host.counts["dead_letters_truncated"] += 1
                    log.warning(
                        "the dead letter of stream item %s of %s (%d bytes) is larger than the "
                        "provider takes (max_item_size %s): published as a reference",
                        item.token,
                        item.stream_id,
                        len(item.data),
                        max_item_size,
                    )
        host.counts["dead_lettered"] += 1
        await self.settle(item, lambda: host.term(item, error))

    # -- settling ---------------------------------------------------------------------------

    async def settle(self, item: ReceivedItem, op: Callable[[], Awaitable[None]]) -> None:
        """Run ack/term for *item*, then forget it (a failure is logged: the adapter will
        deliver the item again, which at-least-once allows)."""
        try:
            await op()
        except Exception:
            log.exception("settling stream item %s failed", item.token)
        # (when cancelled, the item stays held: the agent gives it back on its way out)
        if self.held.pop(item.token.sequence, None) is not None:
            self._release_slot()

    def _release_slot(self) -> None:
        if self.overdraft:
            self.overdraft -= 1
            return
        self.free += 1
        if self._room and self.free >= self.refill and len(self._ready) < self.enough_waiting:
            self._room.unpark_all()

    def ack(self, item: ReceivedItem) -> None:
        """Ack *item*, whose handlers all returned: the acker task sends it (with every
        other item acked meanwhile) in one ``adapter.ack`` call, then forgets it. It counts
        as acked from now on: a failing ``adapter.ack`` is logged (the item comes back,
        which at-least-once allows), and acks still pending when the agent stops are sent
        before anything is given back."""
        self.acks.append(item)
        self.acks_due.set()
        self.host.counts["acked"] += 1

    def _take_acks(self) -> list[ReceivedItem]:
        batch, self.acks = self.acks, []
        self.acks_due = trio.Event()
        return batch

    async def _send_acks(self) -> None:
        """The acker: wakes up after a round of workers acked items and acks them at once."""
        while True:
            await self.acks_due.wait()
            batch = self._take_acks()
            try:
                await self._ack_batch(batch)
            except BaseException:
                self.acks[:0] = batch  # cancelled: acked on the agent's way out (idempotent)
                raise

    async def _ack_batch(self, batch: list[ReceivedItem]) -> None:
        try:
            await self.host.ack(batch)
        except Exception:
            log.exception("acking stream items %s failed", ", ".join(str(i.token) for i in batch))
        held = self.held
        for item in batch:
            if held.pop(item.token.sequence, None) is not None:
                self._release_slot()

    async def give_back(self, item: ReceivedItem, delay: float) -> None:
        await self.settle(item, lambda: self.host.nak(item, delay))
