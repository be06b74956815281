"""The built-in ``memory`` stream provider: an in-process, partitioned log with acks.

Not durable: the log lives as long as the adapter object. It behaves like a JetStream
stream with one durable pull consumer per partition (limits retention): sequences are
shared by all partitions and increase, items stay in the log after they are acked (so
``read_from`` can rewind), unacked items come back after ``ack_wait`` seconds, naked ones
after their delay, and a ``msg_id`` seen within ``dedup_window`` seconds is not stored
twice. All times are Trio time, so a ``MockClock`` drives it in tests.

Options (``[streams.<name>] options``): ``partitions`` (8), ``ack_wait`` (30 s),
``dedup_window`` (120 s), ``max_items`` (items kept per partition, 100000; the oldest
settled ones are dropped beyond it).

To share one log between several silos (a restart test, say), open one
:class:`MemoryStreamAdapter` yourself and register a factory that yields it.

May import: layers 0-7 (the contracts it implements) and ``hookspecs``. Not the plugin
manager, the silo or the client: a built-in is an ordinary plugin.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import trio

from .._exceptions import ConfigError
from .._registry import ProviderContext, ProviderRegistry
from .._streams.model import (
    EncodedItem,
    ReceivedItem,
    SequenceToken,
    StreamAdapter,
    StreamError,
    StreamId,
    StreamOptions,
)
from ..hookspecs import hookimpl

__all__ = ["MemoryStreamAdapter", "open_memory_stream_adapter"]


@attrs.define(eq=False)
class _Entry:
    stream_id: StreamId
    item: EncodedItem
    token: SequenceToken
    deliveries: int = 0
    settled: bool = False  # acked or terminated
    due: float | None = None  # pending: when it may be delivered again


@attrs.define(eq=False)
class _Partition:
    log: collections.OrderedDict[int, _Entry] = attrs.field(factory=collections.OrderedDict)
    cursor: int = 0  # sequences <= cursor have been delivered at least once
    undelivered: collections.deque[int] = attrs.field(factory=collections.deque)
    redeliveries: list[tuple[float, int]] = attrs.field(factory=list)  # heap (due, sequence)
    wakeup: trio.Event = attrs.field(factory=trio.Event)


class MemoryStreamAdapter(StreamAdapter):
    """The partitioned in-memory log (see the module docstring)."""

    supports_read_from: ClassVar[bool] = True

    def __init__(
        self,
        partitions: int = 8,
        *,
        ack_wait: float = 30.0,
        dedup_window: float = 120.0,
        max_items: int = 100_000,
    ) -> None:
        if partitions < 1:
            raise ValueError("a memory stream adapter needs at least one partition")
        self._partitions = [_Partition() for _ in range(partitions)]
        self.ack_wait = ack_wait
        self.progress_interval = ack_wait / 3
        self.dedup_window = dedup_window
        self.max_items = max_items
        self._sequence = 0
        self._msg_ids: dict[str, tuple[float, SequenceToken]] = {}
        self._msg_id_order: collections.deque[tuple[float, str]] = collections.deque()

    def partitions(self) -> int:
        return len(self._partitions)

    def _partition(self, partition: int) -> _Partition:
        if not 0 <= partition < len(self._partitions):
            raise StreamError(f"partition {partition} out of range 0..{len(self._partitions) - 1}")
        return self._partitions[partition]

    def _entry(self, item: ReceivedItem) -> _Entry | None:
        return self._partition(item.token.partition).log.get(item.token.sequence)

    async def publish_batch(
        self, stream_id: StreamId, partition: int, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        await trio.lowlevel.checkpoint()
        part = self._partition(partition)
        now = trio.current_time()
        while self._msg_id_order and self._msg_id_order[0][0] <= now - self.dedup_window:
            _, old = self._msg_id_order.popleft()
            seen = self._msg_ids.get(old)
            if seen is not None and seen[0] <= now - self.dedup_window:
                del self._msg_ids[old]
        tokens = []
        for item in items:
            seen = self._msg_ids.get(item.msg_id)
            if seen is not None:
                tokens.append(seen[1])
                continue
            self._sequence += 1
            token = SequenceToken(partition, self._sequence)
            part.log[token.sequence] = _Entry(stream_id, item, token)
            part.undelivered.append(token.sequence)
            self._msg_ids[item.msg_id] = (now, token)
            self._msg_id_order.append((now, item.msg_id))
            tokens.append(token)
        self._trim(part)
        part.wakeup.set()
        return tokens

    def _trim(self, part: _Partition) -> None:
        while len(part.log) > self.max_items:
            sequence, entry = next(iter(part.log.items()))
            if not entry.settled:
                return
            del part.log[sequence]

    def _received(self, entry: _Entry, remaining: int) -> ReceivedItem:
        entry.deliveries += 1
        entry.due = trio.current_time() + self.ack_wait
        part = self._partitions[entry.token.partition]
        heapq.heappush(part.redeliveries, (entry.due, entry.token.sequence))
        return ReceivedItem(
            stream_id=entry.stream_id,
            data=entry.item.data,
            msg_id=entry.item.msg_id,
            token=entry.token,
            attempt=entry.deliveries,
            headers=dict(entry.item.headers),
            pending=remaining,
        )

    async def receive(self, partition: int, max_items: int) -> list[ReceivedItem]:
        part = self._partition(partition)
        await trio.lowlevel.checkpoint()
        while True:
            now = trio.current_time()
            batch: list[ReceivedItem] = []
            while part.redeliveries and len(batch) < max_items:
                due, sequence = part.redeliveries[0]
                entry = part.log.get(sequence)
                if entry is None or entry.settled or entry.due != due:
                    heapq.heappop(part.redeliveries)  # settled or rescheduled since
                    continue
                if due > now:
                    break
                heapq.heappop(part.redeliveries)
                batch.append(self._received(entry, len(part.undelivered)))
            while part.undelivered and len(batch) < max_items:
                entry = part.log.get(part.undelivered.popleft())
                if entry is not None:
                    batch.append(self._received(entry, len(part.undelivered)))
            if batch:
                return batch  # no checkpoint after taking items: a cancel must not lose them
            part.wakeup = trio.Event()
            wait = part.redeliveries[0][0] - now if part.redeliveries else None
            with trio.move_on_after(wait) if wait is not None else contextlib.nullcontext():
                await part.wakeup.wait()

    async def ack(self, items: Sequence[ReceivedItem]) -> None:
        await trio.lowlevel.checkpoint()
        for item in items:
            entry = self._entry(item)
            if entry is not None:
                entry.settled = True
                entry.due = None

    async def nak(self, item: ReceivedItem, delay: float) -> None:
        await trio.lowlevel.checkpoint()
        entry = self._entry(item)
        if entry is None or entry.settled:
            return
        entry.due = trio.current_time() + max(0.0, delay)
        part = self._partitions[item.token.partition]
        heapq.heappush(part.redeliveries, (entry.due, entry.token.sequence))
        part.wakeup.set()

    async def term(self, item: ReceivedItem, reason: str) -> None:
        await self.ack([item])

    async def in_progress(self, items: Sequence[ReceivedItem]) -> None:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        for item in items:
            entry = self._entry(item)
            if entry is not None and not entry.settled and entry.due is not None:
                entry.due = now + self.ack_wait
                part = self._partitions[item.token.partition]
                heapq.heappush(part.redeliveries, (entry.due, entry.token.sequence))

    async def read_from(self, partition: int, sequence: int, max_items: int) -> list[ReceivedItem]:
        await trio.lowlevel.checkpoint()
        part = self._partition(partition)
        found: list[ReceivedItem] = []
        for seq, entry in part.log.items():
            if seq < sequence:
                continue
            if len(found) >= max_items:
                break
            found.append(
                ReceivedItem(
                    stream_id=entry.stream_id,
                    data=entry.item.data,
                    msg_id=entry.item.msg_id,
                    token=entry.token,
                    headers=dict(entry.item.headers),
                )
            )
        return found


_OPTIONS: dict[str, tuple[type, float]] = {
    "partitions": (int, 1),
    "ack_wait": (float, 0),
    "dedup_window": (float, 0),
    "max_items": (int, 1),
}


def _memory_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        known = sorted(set(_OPTIONS) | StreamOptions.KEYS)
        raise ConfigError(
            f"[streams.{name}] the memory stream provider has no option "
            f"{', '.join(map(repr, unknown))}; options: {', '.join(known)}"
        )
    parsed: dict[str, Any] = {}
    for key, value in options.items():
        kind, minimum = _OPTIONS[key]
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if isinstance(value, bool) or not ok or value < minimum or (kind is float and value == 0):
            what = "an integer >= 1" if kind is int else "a positive number of seconds"
            raise ConfigError(f"[streams.{name}] option {key!r} must be {what}, got {value!r}")
        parsed[key] = kind(value)
    return parsed


@contextlib.asynccontextmanager
async def open_memory_stream_adapter(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[MemoryStreamAdapter]:
    """The ``memory`` stream provider's factory."""
    parsed = _memory_options(context.name, options)
    partitions = parsed.pop("partitions", 8)
    yield MemoryStreamAdapter(partitions, **parsed)


@hookimpl
def grains_register_streams(registry: ProviderRegistry[Any]) -> None:
    registry.register("memory", open_memory_stream_adapter)
