"""The stream-adapter conformance kit: the memory adapter passes it, and broken adapters
fail it with a message naming the rule."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import trio
import trio.testing

from trio_grains import EncodedItem, ReceivedItem, SequenceToken, StreamId
from trio_grains._builtin.memory_streams import MemoryStreamAdapter
from trio_grains.testing import STREAM_CHECKS, check_stream_adapter


def opener(
    make: Callable[[], MemoryStreamAdapter],
) -> Callable[[], contextlib.AbstractAsyncContextManager[MemoryStreamAdapter]]:
    @contextlib.asynccontextmanager
    async def open_adapter() -> AsyncIterator[MemoryStreamAdapter]:
        yield make()

    return open_adapter


async def test_memory_adapter_passes_the_kit(autojump_clock: trio.testing.MockClock) -> None:
    await check_stream_adapter(opener(MemoryStreamAdapter))


async def test_one_shared_backend_passes_too(autojump_clock: trio.testing.MockClock) -> None:
    shared = MemoryStreamAdapter(partitions=3)
    await check_stream_adapter(opener(lambda: shared))


@pytest.mark.parametrize("partitions", [1, 2, 16])
async def test_any_partition_count(partitions: int, autojump_clock: trio.testing.MockClock) -> None:
    await check_stream_adapter(opener(lambda: MemoryStreamAdapter(partitions)))


# --- broken adapters fail with the rule they break ---------------------------------------


class NoDedup(MemoryStreamAdapter):
    async def publish_batch(
        self, stream_id: StreamId, partition: int, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        self._msg_ids.clear()
        return await super().publish_batch(stream_id, partition, items)


class EagerNak(MemoryStreamAdapter):
    async def nak(self, item: ReceivedItem, delay: float) -> None:
        await super().nak(item, 0)


class ForgetfulAck(MemoryStreamAdapter):
    async def ack(self, items: Sequence[ReceivedItem]) -> None:
        await trio.lowlevel.checkpoint()  # acks nothing: items come back after ack_wait


class TermIsNak(MemoryStreamAdapter):
    async def term(self, item: ReceivedItem, reason: str) -> None:
        await super().nak(item, 0)


class Reversed(MemoryStreamAdapter):
    async def receive(self, partition: int, max_items: int) -> list[ReceivedItem]:
        return list(reversed(await super().receive(partition, max_items)))


class NoAttemptCount(MemoryStreamAdapter):
    async def receive(self, partition: int, max_items: int) -> list[ReceivedItem]:
        import attrs

        return [attrs.evolve(i, attempt=1) for i in await super().receive(partition, max_items)]


class ReadConsumes(MemoryStreamAdapter):
    async def read_from(self, partition: int, sequence: int, max_items: int) -> list[ReceivedItem]:
        found = await super().read_from(partition, sequence, max_items)
        for item in found:
            entry = self._entry(item)
            assert entry is not None
            entry.deliveries += 1
        return found


class ShortAckWait(MemoryStreamAdapter):
    def __init__(self) -> None:
        super().__init__(ack_wait=0.1)


@pytest.mark.parametrize(
    ("adapter", "check", "message"),
    [
        (NoDedup, "dedup_by_msg_id", "a duplicate publish must return the original token"),
        (EagerNak, "nak_delay", "a naked item waits its delay"),
        (TermIsNak, "term", "a terminated item never comes back"),
        (Reversed, "round_trip_and_order_per_key", "must arrive in publish order"),
        (NoAttemptCount, "ack_and_nak", "a redelivered item has attempt 2, not 1"),
        (ReadConsumes, "read_from", "read_from must not count as a delivery"),
        (ShortAckWait, "round_trip_and_order_per_key", "each item comes once"),
    ],
)
async def test_broken_adapters_fail_with_the_rule(
    adapter: type[MemoryStreamAdapter],
    check: str,
    message: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(AssertionError, match=message):
        await STREAM_CHECKS[check](opener(adapter))
    with pytest.raises(AssertionError) as info:
        await check_stream_adapter(opener(adapter))
    assert any("trio_grains.testing stream adapter check" in n for n in info.value.__notes__)


async def test_forgetful_ack_is_caught(autojump_clock: trio.testing.MockClock) -> None:
    # acked items must never come back, even after the ack wait
    class Forgetful(ForgetfulAck):
        def __init__(self) -> None:
            super().__init__(ack_wait=0.2)

    with pytest.raises(AssertionError, match=r"acked items never come back|only the naked item"):
        await STREAM_CHECKS["ack_and_nak"](opener(Forgetful))
