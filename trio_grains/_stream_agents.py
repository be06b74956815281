"""The streaming runtime: a stream provider's pulling agents, delivery, retries, dead letters.

One :class:`StreamProvider` per configured ``[streams.<name>]`` runs in the silo's nursery
around the provider's :class:`~trio_grains._streams.StreamAdapter`:

* one *pulling agent* per owned partition (all of them in a single silo;
  :meth:`StreamProvider.set_owned_partitions` is the hook for partition balancing) calls
  ``receive`` in a loop. It holds at most ``max_in_flight`` items (a semaphore window: the
  backpressure; a slow grain slows the pulling, nothing piles up in memory);
* items are queued per stream key; one worker task per key with items delivers them in
  order, up to ``max_concurrent_keys`` keys of a partition at a time;
* an item goes to every subscriber of its stream (implicit subscriptions of its
  namespace, explicit ones of its stream id). Grains are called as turns through the
  catalog, activating them. The item is acked only after every handler returned;
* a handler that raises is retried in place with exponential backoff (the key waits, so
  later items of the key never overtake it; handlers that already succeeded are not
  called again); after ``max_deliveries`` attempts the item is published to the
  dead-letter namespace as a :class:`~trio_grains._streams.DeadLetter` and terminated, and
  the key moves on;
* on shutdown or loss of a partition, running handlers get ``drain_timeout`` seconds; every
  item still held is then given back with ``nak(item, 0)``, so another silo (or the next
  run) gets it at once.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import traceback
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._exceptions import (
    ConfigError,
    GrainMethodError,
    GrainTypeError,
    PluginError,
    SerializationError,
)
from ._grain import Grain, class_info
from ._ids import GrainId, GrainKey, GrainType
from ._streams import (
    DeadLetter,
    EncodedItem,
    ReceivedItem,
    SequenceToken,
    StreamAdapter,
    StreamError,
    StreamId,
    StreamOptions,
    StreamStatistics,
    implicit_subscriptions,
    item_parameter,
    partition_for,
)

if TYPE_CHECKING:
    from ._catalog import Catalog
    from ._grain import GrainClassRegistry
    from ._serialization import Codec

__all__ = [
    "Stream",
    "StreamProvider",
    "StreamSubscriptionHandle",
    "check_implicit_providers",
    "stream_providers_of",
]

log = logging.getLogger("trio_grains.streams")

_BY_CATALOG: weakref.WeakKeyDictionary[Catalog, dict[str, StreamProvider]] = (
    weakref.WeakKeyDictionary()
)


def stream_providers_of(catalog: Catalog) -> dict[str, StreamProvider]:
    """The running stream providers of the silo owning *catalog* (grains reach them so)."""
    return _BY_CATALOG.setdefault(catalog, {})


def check_implicit_providers(registry: GrainClassRegistry, configured: Iterable[str]) -> None:
    """Every ``@implicit_subscription`` must name a configured stream provider."""
    names = sorted(configured)
    for grain_type in registry.types():
        info = registry.get(grain_type)
        assert info is not None
        for sub in implicit_subscriptions(info.cls):
            if sub.provider not in names:
                raise ConfigError(
                    f"{info.cls.__qualname__} subscribes to stream namespace {sub.namespace!r} "
                    f"of stream provider {sub.provider!r}, which is not configured (configured: "
                    f"{', '.join(names) or '(none)'}); add [streams.{sub.provider}] to the "
                    "silo config"
                )


def _describe_error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


# --- subscribers -------------------------------------------------------------------------


@attrs.define(eq=False)
class _Target:
    """One subscriber of one item: how to call it and how to decode for it."""

    key: Hashable
    describe: str
    item_type: Any
    call: Callable[[Any, SequenceToken], Awaitable[Any]]
    subscription: _Subscription | None = None


@attrs.define(eq=False)
class _Subscription:
    id: str
    stream_id: StreamId
    target: _Target
    grain_id: GrainId | None = None
    method: str | None = None
    #: set while a rewind replays history: live items wait for it, then skip what it sent
    replaying: trio.Event | None = None
    replayed_upto: int = -1
    active: bool = True


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
    _runtime: StreamProvider | None = attrs.field(
        default=None, eq=False, repr=False, alias="runtime"
    )

    async def unsubscribe(self) -> bool:
        """End the subscription; False if it had already ended."""
        if self._runtime is None:
            raise StreamError("this handle is not bound to a running stream provider")
        await trio.lowlevel.checkpoint()
        return self._runtime._unsubscribe(self.stream_id, self.subscription_id)


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


# --- the public faces --------------------------------------------------------------------


@attrs.define(eq=False)
class Stream:
    """One stream of a provider: ``provider.get_stream(namespace, key)``. Cheap, no I/O."""

    stream_id: StreamId
    _runtime: StreamProvider = attrs.field(alias="runtime", repr=False)

    @property
    def partition(self) -> int:
        return partition_for(self.stream_id, self._runtime.partitions)

    async def publish(
        self, item: Any, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> SequenceToken:
        """Encode *item* with the silo's converter and append it; return its token.

        *msg_id* (default: a fresh UUID) deduplicates: publishing again with the same id
        within the provider's window stores nothing new (use it when retrying a publish).
        """
        data = self._runtime._codec.dumps(item)
        encoded = EncodedItem(data, msg_id or uuid.uuid4().hex, headers or {})
        (token,) = await self._runtime._publish(self.stream_id, [encoded])
        return token

    async def publish_batch(
        self, items: Sequence[Any], *, msg_ids: Sequence[str] | None = None
    ) -> list[SequenceToken]:
        """Publish *items* in order, in one adapter call; return their tokens."""
        if msg_ids is not None and len(msg_ids) != len(items):
            raise ValueError(f"{len(items)} items but {len(msg_ids)} msg_ids")
        ids = list(msg_ids) if msg_ids is not None else [uuid.uuid4().hex for _ in items]
        encoded = [
            EncodedItem(self._runtime._codec.dumps(item), mid)
            for item, mid in zip(items, ids, strict=True)
        ]
        return await self._runtime._publish(self.stream_id, encoded)

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
        return await self._runtime._subscribe(self.stream_id, handler, from_token)

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
            handle = await self._runtime._add_subscription(
                self.stream_id,
                key=("items", uuid.uuid4().hex),
                describe="subscribe_items()",
                item_type=item_type,
                call=deliver,
                from_token=from_token,
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
            self._runtime._unsubscribe(self.stream_id, handle.subscription_id)
            receive.close()
            send.close()

    async def get_subscriptions(self) -> list[StreamSubscriptionHandle]:
        """The explicit subscriptions of this stream (``subscribe_items`` ones excluded)."""
        await trio.lowlevel.checkpoint()
        return self._runtime._handles(self.stream_id)


class StreamProvider:
    """A running stream provider: ``silo.get_stream_provider(name)``, or
    ``self.get_stream_provider(name)`` in a grain."""

    def __init__(
        self, name: str, adapter: StreamAdapter, options: StreamOptions, catalog: Catalog
    ) -> None:
        if not isinstance(adapter, StreamAdapter):
            raise PluginError(
                f"stream provider {name!r} yielded {adapter!r}, which is not a "
                "trio_grains.StreamAdapter: its factory must yield the adapter"
            )
        self.name = name
        self.adapter = adapter
        self.options = options
        self.partitions = adapter.partitions()
        if not isinstance(self.partitions, int) or self.partitions < 1:
            raise StreamError(f"stream provider {name!r}: partitions() must be an int >= 1")
        self._catalog = catalog
        self._codec: Codec = catalog.codec
        self._owned: set[int] = set(range(self.partitions))
        self._agents: dict[int, _Agent] = {}
        self._nursery: trio.Nursery | None = None
        self._subs: dict[StreamId, dict[str, _Subscription]] = {}
        self._implicit: dict[str, list[tuple[GrainType, str, Any, bool]]] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        for grain_type in catalog.registry.types():
            info = catalog.registry.get(grain_type)
            assert info is not None
            for sub in implicit_subscriptions(info.cls):
                if sub.provider == name:
                    item_type, takes_token = item_parameter(
                        info.methods[sub.handler].func, bound=False
                    )
                    self._implicit.setdefault(sub.namespace, []).append(
                        (grain_type, sub.handler, item_type, takes_token)
                    )

    def __repr__(self) -> str:
        return f"<StreamProvider {self.name!r} {type(self.adapter).__qualname__}>"

    def get_stream(self, namespace: str, key: GrainKey) -> Stream:
        """The stream ``(namespace, key)``; *key* as any grain-key kind."""
        return Stream(StreamId(namespace, key), runtime=self)

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(
            provider=self.name,
            partitions=self.partitions,
            owned_partitions=frozenset(self._owned),
            delivered=self.counts["delivered"],
            failed=self.counts["failed"],
            acked=self.counts["acked"],
            redelivered=self.counts["redelivered"],
            dead_lettered=self.counts["dead_lettered"],
            in_flight=sum(len(a.held) for a in self._agents.values()),
            subscriptions=sum(len(s) for s in self._subs.values()),
            lag={p: a.lag for p, a in sorted(self._agents.items())},
        )

    # -- lifetime and partition ownership ----------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        stream_providers_of(self._catalog)[self.name] = self
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for partition in sorted(self._owned):
                    self._start_agent(partition)
                task_status.started()
                await trio.sleep_forever()
        finally:
            stream_providers_of(self._catalog).pop(self.name, None)

    def _start_agent(self, partition: int) -> None:
        assert self._nursery is not None
        agent = _Agent(self, partition)
        self._agents[partition] = agent
        self._nursery.start_soon(agent.run)

    async def set_owned_partitions(self, partitions: Iterable[int]) -> None:
        """Pull exactly *partitions* in this silo from now on (the clustering hook).

        Agents of partitions no longer owned drain (``drain_timeout``) and give their
        items back; new ones start pulling.
        """
        wanted = set(partitions)
        bad = sorted(p for p in wanted if not 0 <= p < self.partitions)
        if bad:
            raise ValueError(f"partitions {bad} out of range 0..{self.partitions - 1}")
        self._owned = wanted
        if self._nursery is None:
            return
        async with trio.open_nursery() as nursery:
            for partition in sorted(set(self._agents) - wanted):
                nursery.start_soon(self._agents.pop(partition).stop)
        for partition in sorted(wanted - set(self._agents)):
            self._start_agent(partition)

    async def stop(self) -> None:
        """Stop every agent (draining) and give held items back; the silo calls it."""
        self._owned = set()
        async with trio.open_nursery() as nursery:
            for agent in self._agents.values():
                nursery.start_soon(agent.stop)
        self._agents.clear()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- publishing -------------------------------------------------------------------------

    async def _publish(self, stream_id: StreamId, items: list[EncodedItem]) -> list[SequenceToken]:
        partition = partition_for(stream_id, self.partitions)
        tokens = await self.adapter.publish_batch(stream_id, partition, items)
        if len(tokens) != len(items):
            raise StreamError(
                f"stream adapter {type(self.adapter).__qualname__} returned {len(tokens)} "
                f"tokens for {len(items)} items"
            )
        return list(tokens)

    # -- subscriptions ----------------------------------------------------------------------

    def _targets(self, stream_id: StreamId) -> list[_Target]:
        targets = []
        for grain_type, method, item_type, takes_token in self._implicit.get(
            stream_id.namespace, ()
        ):
            grain_id = GrainId(grain_type, stream_id.key)
            targets.append(
                _Target(
                    ("implicit", grain_type, method),
                    f"{grain_id}.{method}",
                    item_type,
                    self._grain_caller(grain_id, method, takes_token),
                )
            )
        targets.extend(sub.target for sub in self._subs.get(stream_id, {}).values())
        return targets

    def _grain_caller(
        self, grain_id: GrainId, method: str, takes_token: bool
    ) -> Callable[[Any, SequenceToken], Awaitable[Any]]:
        invoke = self._catalog.invoke_by_id

        async def call(value: Any, token: SequenceToken) -> Any:
            return await invoke(grain_id, method, (value, token) if takes_token else (value,))

        return call

    async def _subscribe(
        self,
        stream_id: StreamId,
        handler: Callable[..., Awaitable[Any]],
        from_token: SequenceToken | None,
    ) -> StreamSubscriptionHandle:
        grain = getattr(handler, "__self__", None)
        if inspect.ismethod(handler) and isinstance(grain, Grain):
            method = handler.__name__
            info = class_info(type(grain))
            if method not in info.methods:
                raise GrainMethodError(
                    f"{type(grain).__qualname__}.{method} is not a grain method: stream "
                    "handlers of grains must be public 'async def' methods"
                )
            grain_id = grain.grain_id
            for sub in self._subs.get(stream_id, {}).values():
                if sub.grain_id == grain_id and sub.method == method:
                    await trio.lowlevel.checkpoint()
                    return self._handle(sub)
            item_type, takes_token = item_parameter(info.methods[method].func, bound=False)
            return await self._add_subscription(
                stream_id,
                key=("grain", grain_id, method),
                describe=f"{grain_id}.{method}",
                item_type=item_type,
                call=self._grain_caller(grain_id, method, takes_token),
                from_token=from_token,
                grain_id=grain_id,
                method=method,
            )
        if not callable(handler):
            raise GrainTypeError(f"stream handler {handler!r} is not callable")
        item_type, takes_token = item_parameter(handler, bound=True)

        async def call(value: Any, token: SequenceToken) -> Any:
            return await (handler(value, token) if takes_token else handler(value))

        return await self._add_subscription(
            stream_id,
            key=("callable", uuid.uuid4().hex),
            describe=getattr(handler, "__qualname__", repr(handler)),
            item_type=item_type,
            call=call,
            from_token=from_token,
        )

    async def _add_subscription(
        self,
        stream_id: StreamId,
        *,
        key: Hashable,
        describe: str,
        item_type: Any,
        call: Callable[[Any, SequenceToken], Awaitable[Any]],
        from_token: SequenceToken | None,
        grain_id: GrainId | None = None,
        method: str | None = None,
    ) -> StreamSubscriptionHandle:
        if from_token is not None:
            self._check_rewind(stream_id, from_token)
        target = _Target(key, describe, item_type, call)
        sub = _Subscription(uuid.uuid4().hex, stream_id, target, grain_id, method)
        target.subscription = sub
        self._subs.setdefault(stream_id, {})[sub.id] = sub
        if from_token is not None:
            sub.replaying = trio.Event()
            if self._nursery is None:
                raise StreamError(f"stream provider {self.name!r} is not running")
            self._nursery.start_soon(self._replay, sub, from_token)
        await trio.lowlevel.checkpoint()
        return self._handle(sub)

    def _check_rewind(self, stream_id: StreamId, token: SequenceToken) -> None:
        if not self.adapter.supports_read_from:
            raise StreamError(
                f"stream provider {self.name!r} ({type(self.adapter).__qualname__}) cannot "
                "rewind: subscribe without from_token"
            )
        expected = partition_for(stream_id, self.partitions)
        if token.partition != expected:
            raise StreamError(
                f"token {token} is not of stream {stream_id}, which lives in partition {expected}"
            )

    def _handle(self, sub: _Subscription) -> StreamSubscriptionHandle:
        return StreamSubscriptionHandle(
            sub.id, sub.stream_id, self.name, sub.grain_id, sub.method, runtime=self
        )

    def _handles(self, stream_id: StreamId) -> list[StreamSubscriptionHandle]:
        return [
            self._handle(sub)
            for sub in self._subs.get(stream_id, {}).values()
            if sub.target.key[0] != "items"  # type: ignore[index]
        ]

    def _unsubscribe(self, stream_id: StreamId, subscription_id: str) -> bool:
        subs = self._subs.get(stream_id, {})
        sub = subs.pop(subscription_id, None)
        if not subs:
            self._subs.pop(stream_id, None)
        if sub is None:
            return False
        sub.active = False
        if sub.replaying is not None:
            sub.replaying.set()
        return True

    async def _replay(self, sub: _Subscription, token: SequenceToken) -> None:
        """Send *sub* the stored items of its stream from *token* on, then let it go live."""
        sequence = token.sequence
        try:
            while sub.active:
                batch = await self.adapter.read_from(
                    token.partition, sequence, self.options.batch_size
                )
                if not batch:
                    break
                for item in batch:
                    if item.stream_id == sub.stream_id and sub.active:
                        error = await self._deliver_with_retries(sub.target, item)
                        if error is not None:
                            log.error("replay of %s to %s failed: %s", item.token, sub.id, error)
                        sub.replayed_upto = item.token.sequence
                sequence = batch[-1].token.sequence + 1
        except Exception:
            log.exception("rewinding subscription %s of %s failed", sub.id, sub.stream_id)
        finally:
            if sub.replaying is not None:
                sub.replaying.set()
                sub.replaying = None

    # -- delivery ---------------------------------------------------------------------------

    async def _call(self, target: _Target, item: ReceivedItem) -> None:
        value = self._codec.loads(item.data, target.item_type)
        await target.call(value, item.token)

    async def _deliver_with_retries(self, target: _Target, item: ReceivedItem) -> str | None:
        for attempt in range(1, self.options.max_deliveries + 1):
            try:
                await self._call(target, item)
                self.counts["delivered"] += 1
                return None
            except Exception as exc:
                self.counts["failed"] += 1
                error = f"{target.describe}: {_describe_error(exc)}"
                if isinstance(exc, SerializationError) or attempt == self.options.max_deliveries:
                    return error
            await trio.sleep(self.options.retry_delay(attempt))
        return None  # max_deliveries >= 1: not reached

    async def _process(self, agent: _Agent, item: ReceivedItem) -> None:
        """Deliver *item* to every subscriber, retrying; then ack or dead-letter it."""
        done: set[Hashable] = set()
        attempt = max(1, item.attempt)
        while True:
            errors: list[str] = []
            fatal = False
            for target in self._targets(item.stream_id):
                if target.key in done:
                    continue
                sub = target.subscription
                if sub is not None:
                    if sub.replaying is not None:
                        await sub.replaying.wait()
                    if not sub.active or item.token.sequence <= sub.replayed_upto:
                        continue
                try:
                    await self._call(target, item)
                except Exception as exc:
                    if sub is not None and not sub.active:
                        continue  # it unsubscribed meanwhile
                    self.counts["failed"] += 1
                    errors.append(f"{target.describe}: {_describe_error(exc)}")
                    fatal = fatal or isinstance(exc, SerializationError)
                    log.debug("stream item %s failed in %s", item.token, target.describe)
                else:
                    self.counts["delivered"] += 1
                    done.add(target.key)
            if not errors:
                await agent.ack(item)
                return
            if fatal or attempt >= self.options.max_deliveries:
                await self._dead_letter(agent, item, attempt, "; ".join(errors))
                return
            await trio.sleep(self.options.retry_delay(attempt))
            attempt += 1
            self.counts["redelivered"] += 1

    async def _dead_letter(
        self, agent: _Agent, item: ReceivedItem, attempts: int, error: str
    ) -> None:
        log.warning(
            "stream item %s of %s failed %d times; dead-lettered: %s",
            item.token,
            item.stream_id,
            attempts,
            error,
        )
        namespace = self.options.dead_letter_namespace
        if namespace and item.stream_id.namespace != namespace:
            letter = DeadLetter(item.stream_id, item.token, item.msg_id, item.data, attempts, error)
            encoded = EncodedItem(
                self._codec.dumps(letter), f"dead-letter:{item.msg_id}", {"error": error[:1000]}
            )
            try:
                await self._publish(StreamId(namespace, item.stream_id.key), [encoded])
            except Exception:
                log.exception("dead letter of %s not published; it comes back", item.token)
                await agent.give_back(item, self.options.retry_delay(attempts))
                return
        self.counts["dead_lettered"] += 1
        await agent.settle(item, lambda: self.adapter.term(item, error))


class _Agent:
    """The pulling agent of one partition."""

    def __init__(self, runtime: StreamProvider, partition: int) -> None:
        self.runtime = runtime
        self.partition = partition
        self.options = runtime.options
        self.held: dict[int, ReceivedItem] = {}
        self.queues: dict[StreamId, collections.deque[ReceivedItem]] = {}
        self.slots = trio.Semaphore(self.options.max_in_flight)
        self.keys = trio.CapacityLimiter(self.options.max_concurrent_keys)
        self.overdraft = 0
        self.lag: int | None = None
        self.stopping = False
        self.receiving = trio.CancelScope()
        self.idle = trio.Event()
        self.done = trio.Event()

    async def run(self) -> None:
        adapter = self.runtime.adapter
        try:
            async with trio.open_nursery() as workers:
                if adapter.progress_interval:
                    workers.start_soon(self._keep_alive, adapter.progress_interval)
                with self.receiving:
                    await self._pull(workers)
                if self.queues:
                    with trio.move_on_after(self.options.drain_timeout):
                        await self.idle.wait()
                workers.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for item in sorted(self.held.values(), key=lambda i: i.token):
                    await self.give_back(item, 0.0)
            self.done.set()

    async def stop(self) -> None:
        self.stopping = True
        self.receiving.cancel()
        await self.done.wait()

    async def _pull(self, workers: trio.Nursery) -> None:
        adapter = self.runtime.adapter
        failures = 0
        while True:
            await self.slots.acquire()
            wanted = min(self.options.batch_size, self.slots.value + 1)
            try:
                batch = await adapter.receive(self.partition, wanted)
                failures = 0
            except Exception:
                self._release_slot()
                failures += 1
                log.exception("receive from partition %d failed", self.partition)
                await trio.sleep(min(self.options.max_backoff, 0.1 * 2**failures))
                continue
            if not batch:
                self._release_slot()
                continue
            # No checkpoint from here on: a cancellation must not lose received items.
            for n, item in enumerate(batch):
                if n:
                    try:
                        self.slots.acquire_nowait()
                    except trio.WouldBlock:  # the adapter returned more than asked for
                        self.overdraft += 1
                seq = item.token.sequence
                if seq in self.held:  # the adapter redelivered what we still work on
                    self._release_slot()
                    continue
                self.held[seq] = item
                self.lag = item.pending
                if item.attempt > 1:
                    self.runtime.counts["redelivered"] += 1
                queue = self.queues.get(item.stream_id)
                if queue is None:
                    queue = self.queues[item.stream_id] = collections.deque()
                    self.idle = trio.Event()
                    workers.start_soon(self._drain_key, item.stream_id, queue)
                queue.append(item)

    async def _drain_key(self, stream_id: StreamId, queue: collections.deque[ReceivedItem]) -> None:
        try:
            async with self.keys:
                while queue and not self.stopping:
                    await self.runtime._process(self, queue[0])
                    queue.popleft()
        finally:
            if self.queues.get(stream_id) is queue and (not queue or self.stopping):
                del self.queues[stream_id]
            if not self.queues:
                self.idle.set()

    async def _keep_alive(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if self.held:
                try:
                    await self.runtime.adapter.in_progress(list(self.held.values()))
                except Exception:
                    log.exception("in_progress on partition %d failed", self.partition)

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
        else:
            self.slots.release()

    async def ack(self, item: ReceivedItem) -> None:
        await self.settle(item, lambda: self.runtime.adapter.ack([item]))
        self.runtime.counts["acked"] += 1

    async def give_back(self, item: ReceivedItem, delay: float) -> None:
        await self.settle(item, lambda: self.runtime.adapter.nak(item, delay))
