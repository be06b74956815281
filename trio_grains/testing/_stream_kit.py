"""The stream-adapter conformance kit: every rule of :class:`~trio_grains.StreamAdapter`.

Each check takes ``open_adapter``, a callable returning an async context manager that
yields an adapter, and raises :class:`AssertionError` naming the broken rule. Checks
publish under a namespace of their own (a random tag), and **ack every item of another
namespace they receive**: run the kit against a backend of its own (a test server).

Times: the checks wait up to :data:`WAIT` seconds for an item that must come and watch
:data:`QUIET` seconds for one that must not. They use Trio's clock, so an in-memory
adapter runs them instantly under ``MockClock(autojump_threshold=0)``; a network adapter
runs them in real time (a few seconds).

May import: every layer below, the ``trio_grains`` package and ``_kit_helpers``. Not the
silo or the client: a kit checks a provider on its own.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

import trio

from .._streams.model import (
    EncodedItem,
    ReceivedItem,
    SequenceToken,
    StreamAdapter,
    StreamId,
    partition_for,
)
from ._kit_helpers import expect_success, new_tag, show, show_exc

__all__ = [
    "QUIET",
    "STREAM_CHECKS",
    "WAIT",
    "StreamAdapterCheck",
    "StreamAdapterOpener",
    "check_stream_adapter",
]

StreamAdapterOpener: TypeAlias = Callable[[], AbstractAsyncContextManager[StreamAdapter]]
"""``open_adapter()``: an adapter (fresh or on the same backend: the kit does not care)."""

StreamAdapterCheck: TypeAlias = Callable[[StreamAdapterOpener], Awaitable[None]]
"""One conformance check: ``await check(open_adapter)``; AssertionError when it fails."""

WAIT = 10.0
QUIET = 0.5
NAK_DELAY = 1.0

# Keys of every kind, and characters a subject-based backend must escape.
SAMPLE_KEYS: tuple[Any, ...] = (
    "plain",
    42,
    uuid.UUID("6f1e4c1a-7b7e-4d8e-9a51-2f3c4d5e6f70"),
    "dots.and spaces/and*wild>cards",
    "unicode ünïcødé 🍕",
)


def _namespace() -> str:
    return f"kit{new_tag()}"


def _item(label: str, headers: Mapping[str, str] | None = None) -> EncodedItem:
    return EncodedItem(f"data {label}".encode(), f"msg-{new_tag()}-{label}", dict(headers or {}))


async def _publish(
    adapter: StreamAdapter, stream_id: StreamId, items: Sequence[EncodedItem]
) -> list[SequenceToken]:
    partition = partition_for(stream_id, adapter.partitions())
    tokens = await expect_success(
        f"publish_batch of {len(items)} items to {stream_id} (partition {partition})",
        lambda: adapter.publish_batch(stream_id, partition, items),
    )
    if not isinstance(tokens, list) or len(tokens) != len(items):
        raise AssertionError(
            f"publish_batch must return one SequenceToken per item; it returned {show(tokens)}"
        )
    for token in tokens:
        if not isinstance(token, SequenceToken) or token.partition != partition:
            raise AssertionError(
                f"publish_batch to partition {partition} must return SequenceTokens of that "
                f"partition; it returned {show(token)}"
            )
    return tokens


async def _receive(
    adapter: StreamAdapter,
    partition: int,
    namespace: str,
    count: int,
    *,
    max_items: int = 100,
    within: float = WAIT,
    rule: str,
) -> list[ReceivedItem]:
    """Receive until *count* items of *namespace* came (more are returned too)."""
    found: list[ReceivedItem] = []
    with trio.move_on_after(within):
        while len(found) < count:
            batch = await expect_success(
                f"receive from partition {partition}", lambda: adapter.receive(partition, max_items)
            )
            if not isinstance(batch, list) or not batch:
                raise AssertionError(
                    f"receive must return a non-empty list (it blocks until items come); "
                    f"it returned {show(batch)}"
                )
            if len(batch) > max_items:
                raise AssertionError(f"receive(max_items={max_items}) returned {len(batch)} items")
            for item in batch:
                if not isinstance(item, ReceivedItem):
                    raise AssertionError(f"receive must return ReceivedItems, got {show(item)}")
                if item.token.partition != partition:
                    raise AssertionError(
                        f"receive from partition {partition} returned an item of partition "
                        f"{item.token.partition} ({item.stream_id})"
                    )
                if item.stream_id.namespace == namespace:
                    found.append(item)
                else:
                    await adapter.ack([item])  # left over from elsewhere
    if len(found) < count:
        raise AssertionError(
            f"{rule}; only {len(found)} of {count} items arrived within {within} s"
        )
    return found


async def _quiet(
    adapter: StreamAdapter, partition: int, namespace: str, seconds: float, rule: str
) -> None:
    """Nothing of *namespace* may arrive on *partition* for *seconds*."""
    with trio.move_on_after(seconds):
        found = await _receive(adapter, partition, namespace, 1, within=seconds + 1, rule=rule)
        raise AssertionError(
            f"{rule}; yet {found[0].stream_id} {found[0].msg_id!r} arrived (attempt "
            f"{found[0].attempt})"
        )


def _labels(items: Sequence[ReceivedItem]) -> list[str]:
    return [item.data.decode(errors="replace").removeprefix("data ") for item in items]


# --- the checks --------------------------------------------------------------------------


async def check_partitions(open_adapter: StreamAdapterOpener) -> None:
    """partitions() is an int >= 1 and does not change."""
    async with open_adapter() as adapter:
        first = adapter.partitions()
        if isinstance(first, bool) or not isinstance(first, int) or first < 1:
            raise AssertionError(f"partitions() must be an int >= 1; it returned {show(first)}")
        if adapter.partitions() != first:
            raise AssertionError("partitions() must return the same number every time")


async def check_tokens_increase(open_adapter: StreamAdapterOpener) -> None:
    """publish_batch returns tokens of the partition, increasing in publish order."""
    namespace = _namespace()
    async with open_adapter() as adapter:
        sid = StreamId(namespace, "k")
        tokens = await _publish(adapter, sid, [_item("1"), _item("2"), _item("3")])
        tokens += await _publish(adapter, sid, [_item("4")])
        sequences = [t.sequence for t in tokens]
        if sequences != sorted(set(sequences)):
            raise AssertionError(
                f"sequences of one partition must increase in publish order; got {sequences}"
            )


async def check_round_trip_and_order_per_key(open_adapter: StreamAdapterOpener) -> None:
    """Items arrive once each, on their partition, in publish order per key, intact."""
    namespace = _namespace()
    async with open_adapter() as adapter:
        published: dict[StreamId, list[str]] = {}
        tokens: dict[str, SequenceToken] = {}
        for n in range(3):
            for k, key in enumerate(SAMPLE_KEYS):
                sid = StreamId(namespace, key)
                label = f"{k}-{n}"
                headers = {"n": str(n), "Kit-Header": "välue"}
                (tokens[label],) = await _publish(adapter, sid, [_item(label, headers)])
                published.setdefault(sid, []).append(label)
        by_partition: dict[int, list[StreamId]] = {}
        for sid in published:
            by_partition.setdefault(partition_for(sid, adapter.partitions()), []).append(sid)
        for partition, sids in sorted(by_partition.items()):
            count = sum(len(published[s]) for s in sids)
            rule = f"every item published to partition {partition} must be received from it"
            received = await _receive(adapter, partition, namespace, count, rule=rule)
            await _quiet(adapter, partition, namespace, QUIET, "each item comes once")
            for got in received:
                label = _labels([got])[0]
                if got.stream_id not in sids or label not in published[got.stream_id]:
                    raise AssertionError(f"received {got.stream_id} {label!r}, never published")
                if (
                    got.headers.get("n") != label.split("-")[1]
                    or got.headers.get("Kit-Header") != "välue"
                ):
                    raise AssertionError(f"headers must round-trip; got {dict(got.headers)}")
                if got.token != tokens[label]:
                    raise AssertionError(
                        f"item {label!r} came with token {got.token}, publish returned "
                        f"{tokens[label]}"
                    )
                if got.attempt != 1:
                    raise AssertionError(f"a first delivery has attempt 1, not {got.attempt}")
                if not got.msg_id.endswith(f"-{label}"):
                    raise AssertionError(f"msg_id must round-trip; got {got.msg_id!r}")
            for sid in sids:
                order = _labels([i for i in received if i.stream_id == sid])
                if order != published[sid]:
                    raise AssertionError(
                        f"items of one key must arrive in publish order: {sid} published "
                        f"{published[sid]}, received {order}"
                    )
            await adapter.ack(received)


async def check_receive_waits_for_items(open_adapter: StreamAdapterOpener) -> None:
    """receive blocks until an item comes, respects max_items, and a cancelled receive
    loses nothing."""
    namespace = _namespace()
    sid = StreamId(namespace, "waiting")
    async with open_adapter() as adapter:
        partition = partition_for(sid, adapter.partitions())
        await _quiet(adapter, partition, namespace, QUIET, "nothing is published yet")
        got: list[ReceivedItem] = []

        async def receiver() -> None:
            got.extend(await _receive(adapter, partition, namespace, 1, rule="a waiting receive"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.sleep(QUIET)
            await _publish(adapter, sid, [_item("late")])
        if _labels(got) != ["late"]:
            raise AssertionError(f"a waiting receive must return the item published; got {got}")
        await adapter.ack(got)
        await _publish(adapter, sid, [_item(str(n)) for n in range(5)])
        first = await _receive(adapter, partition, namespace, 1, max_items=2, rule="max_items")
        rest = await _receive(adapter, partition, namespace, 5 - len(first), rule="the rest")
        if _labels(first + rest) != [str(n) for n in range(5)]:
            raise AssertionError(f"receive lost or reordered items: {_labels(first + rest)}")
        await adapter.ack(first + rest)


async def check_ack_and_nak(open_adapter: StreamAdapterOpener) -> None:
    """An acked item never comes back; a naked one does, with its attempt count raised."""
    namespace = _namespace()
    sid = StreamId(namespace, "acks")
    async with open_adapter() as adapter:
        partition = partition_for(sid, adapter.partitions())
        await _publish(adapter, sid, [_item("acked"), _item("naked")])
        acked, naked = await _receive(adapter, partition, namespace, 2, rule="two items")
        await expect_success("ack", lambda: adapter.ack([acked]))
        await expect_success("ack again (idempotent)", lambda: adapter.ack([acked]))
        await expect_success("nak with delay 0", lambda: adapter.nak(naked, 0))
        (again,) = await _receive(adapter, partition, namespace, 1, rule="a naked item comes back")
        if _labels([again]) != ["naked"]:
            raise AssertionError(f"only the naked item may come back, not {_labels([again])}")
        if again.attempt != 2:
            raise AssertionError(f"a redelivered item has attempt 2, not {again.attempt}")
        if again.token != naked.token:
            raise AssertionError(f"a redelivery keeps its token: {naked.token} -> {again.token}")
        await adapter.ack([again])
        await _quiet(adapter, partition, namespace, QUIET, "acked items never come back")


async def check_nak_delay(open_adapter: StreamAdapterOpener) -> None:
    """nak(item, delay) redelivers the item, not before *delay* seconds."""
    namespace = _namespace()
    sid = StreamId(namespace, 7)
    async with open_adapter() as adapter:
        partition = partition_for(sid, adapter.partitions())
        await _publish(adapter, sid, [_item("later")])
        (item,) = await _receive(adapter, partition, namespace, 1, rule="the item")
        await adapter.nak(item, NAK_DELAY)
        naked_at = trio.current_time()
        await _quiet(adapter, partition, namespace, NAK_DELAY / 2, "a naked item waits its delay")
        (again,) = await _receive(adapter, partition, namespace, 1, rule="it then comes back")
        waited = trio.current_time() - naked_at
        if waited < NAK_DELAY * 0.8:
            raise AssertionError(f"nak({NAK_DELAY}) redelivered after only {waited:.3f} s")
        if again.attempt != 2:
            raise AssertionError(f"a redelivered item has attempt 2, not {again.attempt}")
        await adapter.nak(again, 0)
        (third,) = await _receive(adapter, partition, namespace, 1, rule="naked twice")
        if third.attempt != 3:
            raise AssertionError(f"the third delivery has attempt 3, not {third.attempt}")
        await adapter.ack([third])


async def check_term(open_adapter: StreamAdapterOpener) -> None:
    """A terminated item never comes back, even when naked afterwards."""
    namespace = _namespace()
    sid = StreamId(namespace, "poison")
    async with open_adapter() as adapter:
        partition = partition_for(sid, adapter.partitions())
        await _publish(adapter, sid, [_item("poison")])
        (item,) = await _receive(adapter, partition, namespace, 1, rule="the item")
        await expect_success("term", lambda: adapter.term(item, "handler failed: boom"))
        try:
            await adapter.nak(item, 0)
        except Exception as exc:
            raise AssertionError(f"nak after term must be ignored; it raised {show_exc(exc)}")
        await _quiet(adapter, partition, namespace, QUIET, "a terminated item never comes back")


async def check_dedup_by_msg_id(open_adapter: StreamAdapterOpener) -> None:
    """Publishing a msg_id again (a retried publish) stores nothing new."""
    namespace = _namespace()
    sid = StreamId(namespace, "dedup")
    async with open_adapter() as adapter:
        partition = partition_for(sid, adapter.partitions())
        item = _item("once")
        (first,) = await _publish(adapter, sid, [item])
        (second,) = await _publish(adapter, sid, [item])
        if second != first:
            raise AssertionError(
                f"a duplicate publish must return the original token {first}, not {second}"
            )
        received = await _receive(adapter, partition, namespace, 1, rule="the item")
        await _quiet(adapter, partition, namespace, QUIET, "a duplicate msg_id is stored once")
        await adapter.ack(received)


async def check_read_from(open_adapter: StreamAdapterOpener) -> None:
    """read_from returns stored items from a sequence on, acked or not, without
    consuming them (only if supports_read_from)."""
    namespace = _namespace()
    sid = StreamId(namespace, "history")
    async with open_adapter() as adapter:
        if not adapter.supports_read_from:
            return
        partition = partition_for(sid, adapter.partitions())
        tokens = await _publish(adapter, sid, [_item("a"), _item("b"), _item("c")])

        async def read(sequence: int) -> list[str]:
            found = await expect_success(
                f"read_from({partition}, {sequence})",
                lambda: adapter.read_from(partition, sequence, 100),
            )
            mine = [i for i in found if i.stream_id == sid]
            for i in mine:
                if i.token.sequence < sequence:
                    raise AssertionError(f"read_from({sequence}) returned {i.token}")
            return _labels(mine)

        if (got := await read(tokens[1].sequence)) != ["b", "c"]:
            raise AssertionError(f"read_from the second token must return b, c; got {got}")
        if (got := await read(tokens[2].sequence + 1)) != []:
            raise AssertionError(f"read_from past the end must return nothing; got {got}")
        received = await _receive(
            adapter, partition, namespace, 3, rule="read_from consumes nothing"
        )
        if [i.attempt for i in received] != [1, 1, 1]:
            raise AssertionError("read_from must not count as a delivery")
        await adapter.ack(received)
        if (got := await read(tokens[0].sequence)) != ["a", "b", "c"]:
            raise AssertionError(f"acked items must stay readable (limits retention); got {got}")


async def check_in_progress(open_adapter: StreamAdapterOpener) -> None:
    """in_progress on held items succeeds (adapters with an ack wait renew it)."""
    namespace = _namespace()
    sid = StreamId(namespace, "slow")
    async with open_adapter() as adapter:
        partition = partition_for(sid, adapter.partitions())
        await _publish(adapter, sid, [_item("slow")])
        received = await _receive(adapter, partition, namespace, 1, rule="the item")
        await expect_success("in_progress", lambda: adapter.in_progress(received))
        await adapter.ack(received)


def check_partition_function() -> None:
    """The core's partition function is stable (the values every provider relies on)."""
    expected: dict[tuple[str, Any, int], int] = {
        ("orders", "a", 8): 0,
        ("orders", 7, 8): 1,
        ("orders", "42", 8): 6,
        ("orders", "42", 1000): 966,
        ("orders", uuid.UUID(int=1), 1000): 232,
        ("prices", "ünï", 1000): 943,
    }
    for (namespace, key, partitions), partition in expected.items():
        got = partition_for(StreamId(namespace, key), partitions)
        if got != partition:
            raise AssertionError(
                f"partition_for({namespace}/{key!r}, {partitions}) is {got}, not {partition}: "
                "the partition function changed, and with it where every stored item lives"
            )


STREAM_CHECKS: Mapping[str, StreamAdapterCheck] = types.MappingProxyType(
    {
        "partitions": check_partitions,
        "tokens_increase": check_tokens_increase,
        "round_trip_and_order_per_key": check_round_trip_and_order_per_key,
        "receive_waits_for_items": check_receive_waits_for_items,
        "ack_and_nak": check_ack_and_nak,
        "nak_delay": check_nak_delay,
        "term": check_term,
        "dedup_by_msg_id": check_dedup_by_msg_id,
        "read_from": check_read_from,
        "in_progress": check_in_progress,
    }
)
"""Every check by name, to run alone or parametrize a test over."""


async def check_stream_adapter(open_adapter: StreamAdapterOpener) -> None:
    """Check that a stream adapter keeps every rule of :class:`~trio_grains.StreamAdapter`.

    *open_adapter* is called once per check. Raises :class:`AssertionError` naming the
    first rule broken (with a note naming the check). Each check is also available alone
    in :data:`STREAM_CHECKS`.
    """
    check_partition_function()
    for name, check in STREAM_CHECKS.items():
        try:
            await check(open_adapter)
        except AssertionError as exc:
            exc.add_note(f"(trio_grains.testing stream adapter check {name!r})")
            raise
