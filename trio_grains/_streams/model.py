"""Streams: ids, sequence tokens, the stream-adapter contract, options and the public API.

A *stream* is named by a :class:`StreamId` (a namespace and a key). Publishers put items
on it; grains receive them through *implicit* subscriptions (``@implicit_subscription``:
the grain whose key is the stream key handles every item of a namespace) or *explicit*
ones (``await stream.subscribe(handler)``), and plain Trio code iterates them
(``async with stream.subscribe_items() as items``).

The work is split as in Orleans. A provider implements only :class:`StreamAdapter`, a
narrow queue adapter: publish a batch to a partition, receive a batch from a partition,
ack / nak / term, and (optionally) read a partition from a sequence. The core
(``provider.py``) owns the rest: which partition a key lives in
(:func:`partition_for`, so every provider agrees), one pulling agent per owned partition,
backpressure, per-key order, delivery to grains as turns, retries with backoff, the
dead-letter path and statistics.

This module is the bottom of the streams layer: values and the adapter contract, which
the others (``agent``, ``handles``, ``provider``) and adapters import. It imports only
the core's values below it (exceptions, ids, the grain marker), never another module of
this package.
"""

from __future__ import annotations

import abc
import inspect
import re
import typing
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import attrs

from .._exceptions import ConfigError, GrainTypeError, StreamError
from .._grain import Grain, mark_runtime_called
from .._ids import check_key, encode_key

__all__ = [
    "DeadLetter",
    "EncodedItem",
    "ImplicitSubscription",
    "ReceivedItem",
    "SequenceToken",
    "StreamAdapter",
    "StreamError",
    "StreamId",
    "StreamOptions",
    "StreamStatistics",
    "implicit_subscription",
    "implicit_subscriptions",
    "item_parameter",
    "partition_for",
]

C = TypeVar("C", bound=type)

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]+")


# --- ids and tokens --------------------------------------------------------------------


def _check_namespace(_inst: object, _attr: object, value: str) -> None:
    if not isinstance(value, str) or not _NAMESPACE_RE.fullmatch(value):
        raise StreamError(
            f"stream namespace {value!r} is not valid: use ASCII letters, digits, '-' and '_' "
            "(namespaces become subject tokens, so no '.', '/' or spaces)"
        )


@attrs.frozen(order=True, cache_hash=True)
class StreamId:
    """A stream: a *namespace* (``"orders"``) and a *key*, written ``"orders/42"``.

    The key is given as any grain-key kind (str, int, UUID) and stored encoded exactly as
    a grain key (``42`` -> ``"2A"``), so an implicit subscription activates the grain whose
    key is the stream key.
    """

    namespace: str = attrs.field(validator=_check_namespace)
    key: str = attrs.field(converter=encode_key, validator=check_key)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> StreamId:
        """Parse ``"namespace/key"`` at the first ``/`` (keys may contain ``/``)."""
        namespace, slash, key = text.partition("/")
        if not slash:
            raise StreamError(f"{text!r} is not a stream id: expected 'namespace/key'")
        return cls(namespace, key)


def partition_for(stream_id: StreamId, partitions: int) -> int:
    """The partition of *stream_id* among *partitions*: CRC-32 of ``"namespace/key"``
    (UTF-8) modulo *partitions*. Stable across processes and versions; every provider and
    every silo computes the same one (Python's ``hash`` would not)."""
    return zlib.crc32(str(stream_id).encode("utf-8")) % partitions


@attrs.frozen(order=True)
class SequenceToken:
    """Where an item sits: its partition and its sequence number in that partition.

    Sequences increase within a partition (they may skip numbers: a JetStream provider
    uses the stream sequence, shared by all partitions). Tokens order by (partition,
    sequence); only tokens of one partition compare meaningfully.
    """

    partition: int
    sequence: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.sequence}"


# --- what adapters move ----------------------------------------------------------------


@attrs.frozen
class EncodedItem:
    """An item on its way to an adapter: encoded *data*, the publisher's *msg_id*
    (deduplication key) and optional string *headers*."""

    data: bytes
    msg_id: str
    headers: Mapping[str, str] = attrs.field(factory=dict)

    def size(self) -> int:
        """The item's size as :attr:`StreamAdapter.max_item_size` counts it: bytes of
        ``data``, plus for each header ``len(name) + len(value) + 4`` (UTF-8), plus
        ``len(msg_id) + 4`` (the adapter adds the framing and its msg-id header's name)."""
        size = len(self.data) + _utf8_len(self.msg_id) + 4
        for name, value in self.headers.items():
            size += _utf8_len(name) + _utf8_len(value) + 4
        return size


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


@attrs.frozen
class ReceivedItem:
    """An item as an adapter hands it to the core.

    * ``stream_id``, ``data``, ``msg_id``, ``headers``: as published.
    * ``token``: its partition and sequence.
    * ``attempt``: how many times it has been delivered, this time included (1 the first
      time; JetStream's ``num_delivered``). Items from ``read_from`` carry 1.
    * ``pending``: how many items of the partition wait behind it, when the adapter knows
      (JetStream's ``num_pending``); the core reports it as lag.
    * ``handle``: the adapter's own reference for ack / nak / term (a reply subject, ...).
    * ``unreadable``: empty, or why the adapter could not read the item's stream id (its
      subject is not one the adapter writes: another publisher's, a namespace that is not
      valid, a key that does not unescape). Its ``stream_id`` is then
      :attr:`UNREADABLE`; the core delivers it to nobody and dead-letters it at once
      with this reason (and counts it in ``StreamStatistics.unreadable``).
    """

    stream_id: StreamId
    data: bytes
    msg_id: str
    token: SequenceToken
    attempt: int = 1
    headers: Mapping[str, str] = attrs.field(factory=dict)
    pending: int | None = None
    handle: Any = attrs.field(default=None, eq=False, repr=False)
    unreadable: str = ""

    UNREADABLE: ClassVar[StreamId] = StreamId("unreadable", "unreadable")
    """The ``stream_id`` of an item the adapter could not read (see ``unreadable``)."""


class StreamAdapter(abc.ABC):
    """The contract of a stream provider: a partitioned, acknowledged queue.

    Check yours with :func:`trio_grains.testing.check_stream_adapter`. The core calls it
    from one pulling agent per partition, so ``receive`` of one partition is never called
    twice at once by one silo. No method takes a timeout: callers use cancel scopes, and
    every method must be safe to cancel. Translate backend errors into
    :class:`StreamError`.

    Rules every adapter keeps:

    * An item published to partition *p* is received from partition *p* only, and items
      of one partition are first delivered in publish order (sequence order).
    * An item stays pending from ``receive`` until ``ack`` or ``term``. ``nak`` makes it
      deliverable again after a delay; so does not acking it for a while (the backend's
      ack wait, JetStream's ``ack_wait``): that is how items held by a silo that died come
      back. ``in_progress`` resets that wait.
    * ``attempt`` counts deliveries of the item, across naks and ack-wait expiries.
    """

    supports_read_from: ClassVar[bool] = False
    """True if :meth:`read_from` works (retention keeps items after they are acked)."""

    takeover_delay: float = 0.0
    """Seconds a silo that takes a partition over from a silo that *died* waits before
    pulling it: the items the dead silo held come back only after the backend's ack wait,
    and must be delivered before newer items of their keys (JetStream: ``ack_wait``)."""

    progress_interval: float | None = None
    """How often an item the core holds needs :meth:`in_progress` (seconds), or ``None``
    when the adapter has no ack wait to renew. The core renews the items it has held this
    long or longer, so that none goes more than 1.5 times this without a renewal: make
    it at most a third of the ack wait."""

    @property
    def max_item_size(self) -> int | None:
        """The largest item :meth:`publish_batch` stores, as :meth:`EncodedItem.size`
        counts it, or ``None`` (no limit known; the default). The core keeps dead
        letters below it (a larger one is cut to a reference); ``publish_batch`` raises
        :class:`StreamError` for a larger item rather than break its connection."""
        return None

    @abc.abstractmethod
    def partitions(self) -> int:
        """The number of partitions (>= 1); fixed for the adapter's lifetime."""

    @abc.abstractmethod
    async def publish_batch(
        self, stream_id: StreamId, partition: int, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        """Append *items* of *stream_id*, in order, to *partition*; return their tokens.

        *partition* is ``partition_for(stream_id, self.partitions())``, computed by the
        core. An item whose ``msg_id`` was published recently (the adapter's dedup window)
        is not appended again: its original token is returned. When this returns, the
        items are stored (JetStream: the publish acks arrived).
        """

    @abc.abstractmethod
    async def receive(self, partition: int, max_items: int) -> list[ReceivedItem]:
        """Wait until items of *partition* are deliverable; return 1 to *max_items* of them.

        New items come in sequence order; items due again (nak delay or ack wait passed)
        may come before them. Blocks until at least one item is there, or until the
        caller's cancel scope is cancelled (then nothing is lost: items not returned stay
        deliverable).
        """

    @abc.abstractmethod
    async def ack(self, items: Sequence[ReceivedItem]) -> None:
        """The core is done with *items*: never deliver them again. Idempotent."""

    @abc.abstractmethod
    async def nak(self, item: ReceivedItem, delay: float) -> None:
        """Deliver *item* again, not before *delay* seconds (0: as soon as possible)."""

    @abc.abstractmethod
    async def term(self, item: ReceivedItem, reason: str) -> None:
        """Never deliver *item* again: it went to the dead-letter path for *reason*."""

    async def in_progress(self, items: Sequence[ReceivedItem]) -> None:  # noqa: B027
        """The core still works on *items*: restart their ack wait. Default: nothing."""

    async def release(self, partition: int) -> None:  # noqa: B027
        """This silo stops pulling *partition* (it moves to another silo): end any
        outstanding request and make items fetched but not yet returned by :meth:`receive`
        deliverable again at once, so the next owner gets them first. Default: nothing."""

    async def read_from(self, partition: int, sequence: int, max_items: int) -> list[ReceivedItem]:
        """Up to *max_items* stored items of *partition* with a sequence >= *sequence*,
        in order, acked or not; ``[]`` past the end. Does not block, and changes no
        delivery state. Only where :attr:`supports_read_from`."""
        raise StreamError(f"{type(self).__qualname__} cannot read a partition from a sequence")


# --- options and statistics ------------------------------------------------------------


def _option(provider: str, key: str, value: Any, kind: type, minimum: float) -> Any:
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if isinstance(value, bool) or not ok or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(
            f"[streams.{provider}] option {key!r} must be {what} >= {minimum}, got {value!r}"
        )
    return kind(value)


@attrs.frozen(kw_only=True)
class StreamOptions:
    """The core's options of a stream provider, read from ``[streams.<name>] options``
    beside the adapter's own options (the adapter never sees these keys).

    * ``max_deliveries``: handler attempts before an item goes to the dead-letter path.
    * ``backoff`` / ``backoff_multiplier`` / ``max_backoff``: seconds before the first
      retry, growth factor per retry, cap.
    * ``dead_letter_namespace``: dead letters are published there (same key) as
      :class:`DeadLetter` items; ``""`` only terminates them.
    * ``batch_size``: items asked per ``receive``; ``max_in_flight``: items one partition
      agent holds at most (received, not yet acked); ``max_concurrent_keys``: keys of one
      partition handled at the same time.
    * ``drain_timeout``: on shutdown, seconds running handlers may finish before they are
      cancelled and their items given back (``nak``).
    """

    max_deliveries: int = 5
    backoff: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff: float = 60.0
    dead_letter_namespace: str = "dead-letters"
    batch_size: int = 64
    max_in_flight: int = 1024
    max_concurrent_keys: int = 64
    drain_timeout: float = 5.0

    KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "max_deliveries",
            "backoff",
            "backoff_multiplier",
            "max_backoff",
            "dead_letter_namespace",
            "batch_size",
            "max_in_flight",
            "max_concurrent_keys",
            "drain_timeout",
        }
    )

    @classmethod
    def split(
        cls, provider: str, options: Mapping[str, Any]
    ) -> tuple[StreamOptions, dict[str, Any]]:
        """The core's options from *options*, and the rest (for the adapter's factory)."""
        mine = {k: v for k, v in options.items() if k in cls.KEYS}
        rest = {k: v for k, v in options.items() if k not in cls.KEYS}
        kwargs: dict[str, Any] = {}
        for key in ("max_deliveries", "batch_size", "max_in_flight", "max_concurrent_keys"):
            if key in mine:
                kwargs[key] = _option(provider, key, mine[key], int, 1)
        for key, minimum in (("backoff", 0), ("max_backoff", 0), ("drain_timeout", 0)):
            if key in mine:
                kwargs[key] = _option(provider, key, mine[key], float, minimum)
        if "backoff_multiplier" in mine:
            kwargs["backoff_multiplier"] = _option(
                provider, "backoff_multiplier", mine["backoff_multiplier"], float, 1
            )
        if "dead_letter_namespace" in mine:
            value = mine["dead_letter_namespace"]
            if not isinstance(value, str) or (value and not _NAMESPACE_RE.fullmatch(value)):
                raise ConfigError(
                    f"[streams.{provider}] option 'dead_letter_namespace' must be a stream "
                    f"namespace (letters, digits, '-', '_') or '', got {value!r}"
                )
            kwargs["dead_letter_namespace"] = value
        return cls(**kwargs), rest

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number *attempt* (1-based)."""
        return float(min(self.max_backoff, self.backoff * self.backoff_multiplier ** (attempt - 1)))


@attrs.frozen
class DeadLetter:
    """What the dead-letter stream receives: the item that failed and why.

    Published on ``StreamId(dead_letter_namespace, <original key>)`` with the msg_id
    ``dead-letter:<partition>:<sequence>`` of the item's token: distinct for every item
    (with or without a msg_id of its own), and the same when the item comes back and its
    dead letter is published again (the adapter's deduplication keeps one).

    * ``stream_id``, ``token``, ``msg_id``: the item's (an item the adapter could not read
      has ``stream_id == ReceivedItem.UNREADABLE``; ``error`` names its subject).
    * ``data``: the item as it was encoded (decode it with ``silo.codec.loads(data,
      ItemType)``); ``size``: its length in bytes.
    * ``attempts``: handler attempts made; ``error``: why it failed.
    * ``truncated``: the whole letter would not fit the provider's
      :attr:`~StreamAdapter.max_item_size`, so it is a reference: ``data`` is empty,
      ``msg_id`` and ``error`` are cut (``...`` at the end); read the item itself from
      the stream by its token where the provider keeps it.
    """

    stream_id: StreamId
    token: SequenceToken
    msg_id: str
    data: bytes
    attempts: int
    error: str
    size: int = 0
    truncated: bool = False


@attrs.frozen
class StreamStatistics:
    """A snapshot of one stream provider in one silo, from ``provider.statistics()``.

    * ``delivered``: handler calls that returned; ``failed``: that raised.
    * ``acked``: items done; ``redelivered``: retries (and adapter redeliveries);
      ``dead_lettered``: items sent to the dead-letter path, of which
      ``dead_letters_truncated`` as a reference (too large for the provider) and
      ``unreadable`` items the adapter could not read (see ``ReceivedItem.unreadable``).
    * ``in_flight``: items received and not yet acked or terminated.
    * ``lag``: per owned partition, items waiting behind the last one received, when the
      adapter reports it (``None`` otherwise).
    """

    provider: str
    partitions: int
    owned_partitions: frozenset[int]
    delivered: int
    failed: int
    acked: int
    redelivered: int
    dead_lettered: int
    in_flight: int
    subscriptions: int
    lag: Mapping[int, int | None]
    unreadable: int = 0
    dead_letters_truncated: int = 0


# --- implicit subscriptions ------------------------------------------------------------


@attrs.frozen
class ImplicitSubscription:
    """One ``@implicit_subscription`` of a grain class."""

    namespace: str
    provider: str
    handler: str


def implicit_subscription(
    namespace: str, *, provider: str = "default", handler: str = "on_stream_item"
) -> Callable[[C], C]:
    """Subscribe every grain of the decorated class to namespace *namespace* of stream
    provider *provider*: an item on stream ``(namespace, key)`` activates the grain with
    that key and calls ``await grain.<handler>(item, token)`` as a turn.

    The handler is a grain method ``async def on_stream_item(self, item: T, token:
    SequenceToken) -> None``; the item is decoded as its annotation ``T``. The item is
    acknowledged after the handler returned; if it raises, it is retried (see
    :class:`StreamOptions`). Stack the decorator for several namespaces.
    """
    _check_namespace(None, None, namespace)

    def decorate(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Grain)):
            raise GrainTypeError(f"@implicit_subscription decorates grain classes, not {cls!r}")
        func = getattr(cls, handler, None)
        if func is None or not inspect.iscoroutinefunction(func) or handler.startswith("_"):
            raise GrainTypeError(
                f"{cls.__qualname__} subscribes to stream namespace {namespace!r} but has no "
                f"grain method {handler!r}: define 'async def {handler}(self, item, token: "
                "SequenceToken) -> None'"
            )
        subs = (*implicit_subscriptions(cls), ImplicitSubscription(namespace, provider, handler))
        cls.__grain_implicit_subscriptions__ = subs  # type: ignore[attr-defined]
        mark_runtime_called(cls, handler)  # stream agents call it from any silo
        return cls

    return decorate


def implicit_subscriptions(cls: type) -> tuple[ImplicitSubscription, ...]:
    """The implicit subscriptions declared on *cls* (and its bases)."""
    return tuple(getattr(cls, "__grain_implicit_subscriptions__", ()))


def item_parameter(func: Callable[..., Any], *, bound: bool) -> tuple[Any, bool]:
    """The item type a handler declares (its first parameter's annotation, ``Any`` if
    none) and whether it also takes the token (a second positional parameter)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not bound:
        params = params[1:]
    if not params:
        raise GrainTypeError(
            f"stream handler {getattr(func, '__qualname__', func)!r} must take the item "
            "(and optionally the token) as parameters"
        )
    item_type = hints.get(params[0].name, Any)
    return item_type, len(params) >= 2
