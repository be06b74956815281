"""The streaming runtime: a stream provider's pulling agents, delivery, retries, dead letters.

One :class:`StreamProvider` per configured ``[streams.<name>]`` runs in the silo's nursery
around the provider's :class:`~trio_grains._streams.model.StreamAdapter`:

* one *pulling agent* per owned partition (all of them in a single silo;
  :meth:`StreamProvider.set_owned_partitions` is the hook for partition balancing) calls
  ``receive`` in a loop. It holds at most ``max_in_flight`` items (a window: the
  backpressure; a slow grain slows the pulling, nothing piles up in memory);
* items are queued per stream key; a key's items are delivered in order by one of at
  most ``max_concurrent_keys`` worker tasks of the partition;
* an item goes to every subscriber of its stream (implicit subscriptions of its
  namespace, explicit ones of its stream id). Grains are called as turns through the
  catalog, activating them. The item is acked only after every handler returned; acks of
  items finished in the same scheduling round go to the adapter in one ``ack`` call;
* a handler that raises is retried in place with exponential backoff (the key waits, so
  later items of the key never overtake it; handlers that already succeeded are not
  called again); after ``max_deliveries`` attempts the item is published to the
  dead-letter namespace as a :class:`~trio_grains._streams.model.DeadLetter` and terminated, and
  the key moves on;
* on shutdown or loss of a partition, running handlers get ``drain_timeout`` seconds; every
  item still held is then given back with ``nak(item, 0)``, so another silo (or the next
  run) gets it at once.

This module holds the provider (lifetime, partition ownership, publishing, subscriptions,
rewinds); the pulling agent is in :mod:`.agent`, and what user code holds
(:class:`Stream`, handles) in :mod:`.handles`. It is the top of the streams layer: it
imports both, and the core below (grains, ids, tracing); the silo and the client build it.
Neither of the others knows it: each runs against a narrow seam the provider implements,

* :class:`~trio_grains._streams.agent.AgentHost`: per owned partition, a
  :class:`_PartitionHost` gives an agent the adapter's calls bound to its partition
  (the adapter's own bound methods: no extra frame per call), the subscribers of an item,
  the codec, tracer, counters and options;
* :class:`~trio_grains._streams.handles.StreamRuntime`: the provider itself, through the
  public methods of the section "the seam of Stream and handles" below.
"""

from __future__ import annotations

import collections
import functools
import inspect
import itertools
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import ConfigError, GrainMethodError, GrainTypeError, PluginError
from .._grain import Grain, class_info
from .._ids import GrainId, GrainKey, GrainType
from .._tracing import Attributes, SpanKind, Tracer, stream_attributes
from .agent import PartitionAgent, Subscription, Target, deliver_with_retries
from .handles import Stream, StreamSubscriptionHandle, bind_handle, new_stream
from .model import (
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
    from .._grain import GrainClassRegistry
    from .._serialization import Codec

__all__ = [
    "Stream",
    "StreamProvider",
    "StreamSubscriptionHandle",
    "check_implicit_providers",
]

log = logging.getLogger("trio_grains.streams")

#: ``invoke(grain_id, method, args)``: the silo dispatcher's ``invoke_by_id``
InvokeById = Callable[[GrainId, str, tuple[Any, ...]], Awaitable[Any]]

#: implicit subscribers built per stream id, kept for the most recent streams: enough for
#: keys with many items close together. Not more: when nearly every item has a key of its
#: own (orders), each entry (a few objects) outlives young garbage collections for nothing,
#: and 4,096 of them made the silo's collections ~20% more frequent.
_IMPLICIT_TARGETS_CACHED = 128


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


class StreamProvider:
    """A running stream provider: ``silo.get_stream_provider(name)``, or
    ``self.get_stream_provider(name)`` in a grain."""

    def __init__(
        self,
        name: str,
        adapter: StreamAdapter,
        options: StreamOptions,
        *,
        codec: Codec,
        tracer: Tracer | None = None,
        registry: GrainClassRegistry | None = None,
        invoke: InvokeById | None = None,
        owned: Iterable[int] | None = None,
    ) -> None:
        """*registry*: the grain classes whose implicit subscriptions this provider
        delivers, through *invoke* (the silo dispatcher's ``invoke_by_id``); neither for a
        provider that only publishes (a client's)."""
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
        self._invoke = invoke
        #: the silo's (or client's) codec: items are encoded with it, and decoded for
        #: each subscriber as the type its handler declares
        self.codec: Codec = codec
        #: with tracing on: publishes and deliveries are spans; items carry the context
        self.tracer: Tracer | None = tracer
        # all partitions in a lone silo; in a cluster, what the partition balancer gives
        self._owned: set[int] = set(range(self.partitions)) if owned is None else set(owned)
        self._agents: dict[int, PartitionAgent] = {}
        self._nursery: trio.Nursery | None = None
        self._subs: dict[StreamId, dict[str, Subscription]] = {}
        self._implicit: dict[str, list[tuple[GrainType, str, Any, bool]]] = {}
        #: counters behind :meth:`statistics`, kept by the agents and rewinds
        self.counts: collections.Counter[str] = collections.Counter()
        # msg ids: a random prefix per provider and a counter (unique, cheaper than uuid4)
        self._msg_prefix = secrets.token_hex(8)
        self._msg_counter = itertools.count()
        self._implicit_targets = functools.lru_cache(maxsize=_IMPLICIT_TARGETS_CACHED)(
            self._build_implicit_targets
        )
        for grain_type in () if registry is None else registry.types():
            assert registry is not None
            info = registry.get(grain_type)
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
        return new_stream(StreamId(namespace, key), self)

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
            unreadable=self.counts["unreadable"],
            dead_letters_truncated=self.counts["dead_letters_truncated"],
        )

    # -- lifetime and partition ownership ----------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for partition in sorted(self._owned):
                self._start_agent(partition)
            task_status.started()
            await trio.sleep_forever()

    def _start_agent(self, partition: int) -> None:
        assert self._nursery is not None
        agent = PartitionAgent(_PartitionHost(self, partition, self._targets))
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
                nursery.start_soon(self._release, self._agents.pop(partition))
        for partition in sorted(wanted - set(self._agents)):
            self._start_agent(partition)

    async def _release(self, agent: PartitionAgent) -> None:
        """Stop *agent* (its held items go back), then let the adapter end its pulls."""
        await agent.stop()
        try:
            await self.adapter.release(agent.partition)
        except StreamError as exc:
            log.warning(
                "stream provider %r: releasing partition %d: %s", self.name, agent.partition, exc
            )

    async def stop(self) -> None:
        """Stop every agent (draining) and give held items back; the silo calls it."""
        self._owned = set()
        async with trio.open_nursery() as nursery:
            for agent in self._agents.values():
                nursery.start_soon(self._release, agent)
        self._agents.clear()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- the seam of Stream and handles (handles.StreamRuntime) --------------------------------
    # Public so that handles.py (and the agents' dead letters) need no private member;
    # user code reaches them through a Stream: provider.get_stream(namespace, key).

    async def publish_encoded(
        self, stream_id: StreamId, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        """Append encoded *items* to *stream_id*, in order, in one adapter call; return
        their tokens. With tracing on, a producer span whose context every item carries
        in its headers. ``Stream.publish`` encodes an item and comes here."""
        tracer = self.tracer
        if tracer is None:
            return await self._publish_batch(stream_id, items)
        attributes: Attributes = {
            **stream_attributes(self.name, stream_id),
            "messaging.batch.message_count": len(items),
        }
        with tracer.span(f"publish {stream_id.namespace}", SpanKind.PRODUCER, attributes):
            headers: dict[str, str] = {}
            tracer.inject(headers)
            if headers:  # each item carries the publish span's context to its consumer
                items = [EncodedItem(i.data, i.msg_id, {**i.headers, **headers}) for i in items]
            return await self._publish_batch(stream_id, items)

    async def _publish_batch(
        self, stream_id: StreamId, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        partition = partition_for(stream_id, self.partitions)
        tokens = await self.adapter.publish_batch(stream_id, partition, items)
        if len(tokens) != len(items):
            raise StreamError(
                f"stream adapter {type(self.adapter).__qualname__} returned {len(tokens)} "
                f"tokens for {len(items)} items"
            )
        return list(tokens)

    def new_msg_id(self) -> str:
        """A msg_id unique to this provider: a random prefix and a counter."""
        return f"{self._msg_prefix}{next(self._msg_counter):x}"

    def new_msg_ids(self, n: int) -> list[str]:
        """*n* fresh msg_ids (as :meth:`new_msg_id`)."""
        prefix = self._msg_prefix
        return [f"{prefix}{i:x}" for i in itertools.islice(self._msg_counter, n)]

    # -- subscriptions ----------------------------------------------------------------------

    def _targets(self, stream_id: StreamId) -> Iterable[Target]:
        """The subscribers of an item of *stream_id*: implicit ones, then explicit ones."""
        implicit = self._implicit_targets(stream_id) if self._implicit else ()
        subs = self._subs.get(stream_id)
        if not subs:
            return implicit
        return [*implicit, *(sub.target for sub in subs.values())]

    def _build_implicit_targets(self, stream_id: StreamId) -> tuple[Target, ...]:
        targets = []
        for grain_type, method, item_type, takes_token in self._implicit.get(
            stream_id.namespace, ()
        ):
            grain_id = GrainId(grain_type, stream_id.key)
            targets.append(
                Target(
                    ("implicit", grain_type, method),
                    f"{grain_id}.{method}",
                    item_type,
                    self._grain_caller(grain_id, method, takes_token),
                )
            )
        return tuple(targets)

    def _grain_caller(
        self, grain_id: GrainId, method: str, takes_token: bool
    ) -> Callable[[Any, SequenceToken], Awaitable[Any]]:
        invoke = self._invoke
        if invoke is None:
            raise StreamError(f"stream provider {self.name!r} only publishes: it delivers nothing")

        async def call(value: Any, token: SequenceToken) -> Any:
            return await invoke(grain_id, method, (value, token) if takes_token else (value,))

        return call

    async def subscribe(
        self,
        stream_id: StreamId,
        handler: Callable[..., Awaitable[Any]],
        *,
        from_token: SequenceToken | None = None,
    ) -> StreamSubscriptionHandle:
        """Subscribe *handler* to *stream_id*: what ``Stream.subscribe`` does (see there).

        A grain method is checked (public, declared by the grain's interfaces) and
        subscribed once per grain; any other async callable through
        :meth:`add_subscription`, decoding items as its first parameter's annotation."""
        grain = getattr(handler, "__self__", None)
        if inspect.ismethod(handler) and isinstance(grain, Grain):
            method = handler.__name__
            info = class_info(type(grain))
            if method not in info.methods:
                raise GrainMethodError(
                    f"{type(grain).__qualname__}.{method} is not a grain method: stream "
                    "handlers of grains must be public 'async def' methods"
                )
            if info.declared is not None and method not in info.declared:
                raise GrainMethodError(
                    f"{type(grain).__qualname__}.{method} is not declared by the grain's "
                    "interfaces: items may be delivered from any silo, and other processes "
                    "may call only interface methods; declare it in one of them"
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

        return await self.add_subscription(
            stream_id,
            call,
            item_type=item_type,
            describe=getattr(handler, "__qualname__", repr(handler)),
            from_token=from_token,
        )

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
        """Subscribe ``await call(value, token)`` to *stream_id*, items decoded as
        *item_type*, for as long as the provider runs. *describe* names the subscriber
        in logs and dead letters; *listed*: returned by :meth:`subscriptions`
        (``Stream.subscribe_items`` subscribes unlisted). *from_token*: replay stored
        items from there first (the adapter must support it)."""
        return await self._add_subscription(
            stream_id,
            key=("callable", uuid.uuid4().hex),
            describe=describe,
            item_type=item_type,
            call=call,
            from_token=from_token,
            listed=listed,
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
        listed: bool = True,
    ) -> StreamSubscriptionHandle:
        if from_token is not None:
            self._check_rewind(stream_id, from_token)
        target = Target(key, describe, item_type, call)
        sub = Subscription(uuid.uuid4().hex, stream_id, target, grain_id, method, listed)
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

    def _handle(self, sub: Subscription) -> StreamSubscriptionHandle:
        handle = StreamSubscriptionHandle(
            sub.id, sub.stream_id, self.name, sub.grain_id, sub.method
        )
        return bind_handle(handle, self)

    def subscriptions(self, stream_id: StreamId) -> list[StreamSubscriptionHandle]:
        """The listed explicit subscriptions of *stream_id* (``Stream.get_subscriptions``)."""
        return [self._handle(sub) for sub in self._subs.get(stream_id, {}).values() if sub.listed]

    def unsubscribe(self, stream_id: StreamId, subscription_id: str) -> bool:
        """End subscription *subscription_id* of *stream_id*; False if it had ended."""
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

    async def _replay(self, sub: Subscription, token: SequenceToken) -> None:
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
                        error = await deliver_with_retries(self, sub.target, item)
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


class _PartitionHost:
    """A provider's :class:`~trio_grains._streams.agent.AgentHost` for one partition.

    The adapter's calls are its own bound methods (``receive`` with the partition bound
    by :func:`functools.partial`), and ``targets`` / ``publish_encoded`` the provider's:
    the agent's calls cost what they cost when it held the provider. The provider's
    name, options, codec, tracer and counters are shared (fixed when it is built)."""

    __slots__ = (
        "_adapter",
        "ack",
        "codec",
        "counts",
        "in_progress",
        "nak",
        "name",
        "options",
        "partition",
        "publish_encoded",
        "receive",
        "targets",
        "term",
        "tracer",
    )

    def __init__(
        self,
        provider: StreamProvider,
        partition: int,
        targets: Callable[[StreamId], Iterable[Target]],
    ) -> None:
        adapter = provider.adapter
        self._adapter = adapter
        self.partition = partition
        self.name = provider.name
        self.options = provider.options
        self.codec = provider.codec
        self.tracer = provider.tracer
        self.counts = provider.counts
        self.receive: Callable[[int], Awaitable[list[ReceivedItem]]] = functools.partial(
            adapter.receive, partition
        )
        self.ack = adapter.ack
        self.nak = adapter.nak
        self.term = adapter.term
        self.in_progress = adapter.in_progress
        self.targets = targets
        self.publish_encoded = provider.publish_encoded

    @property
    def progress_interval(self) -> float | None:
        return self._adapter.progress_interval

    @property
    def max_item_size(self) -> int | None:
        return self._adapter.max_item_size
