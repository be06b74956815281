"""One :class:`PartitionAgent` against a fake :class:`AgentHost`: an in-memory list of
items and subscribers, no silo, no adapter (on Trio's MockClock).

``tests/test_streams.py`` checks the same rules end to end through a silo; here each is
checked at the agent's seam, where the host records every call the agent makes.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from trio_grains import (
    DeadLetter,
    EncodedItem,
    ReceivedItem,
    SequenceToken,
    StreamId,
    StreamOptions,
)
from trio_grains._serialization import Codec, make_converter
from trio_grains._streams.agent import AgentHost, PartitionAgent, Target
from trio_grains._tracing import Tracer


class FakeHost:
    """An :class:`AgentHost` whose adapter is a list: ``put`` items, read what the agent
    acked, nak'd, terminated and published."""

    partition = 0
    name = "fake"
    tracer: Tracer | None = None

    def __init__(self, options: StreamOptions, *, progress_interval: float | None = None) -> None:
        self.options = options
        self.codec = Codec(make_converter())
        self.counts: collections.Counter[str] = collections.Counter()
        self.progress_interval = progress_interval
        self.max_item_size: int | None = None
        self.subscribers: list[Target] = []
        self.acked: list[ReceivedItem] = []
        self.naks: list[tuple[ReceivedItem, float]] = []
        self.terms: list[tuple[ReceivedItem, str]] = []
        self.published: list[tuple[StreamId, EncodedItem]] = []
        self.in_progress_calls: list[list[ReceivedItem]] = []
        self.in_progress_times: list[float] = []
        self.receives = 0
        self.asked: list[int] = []  # max_items of every receive call
        self.refuse_publish = False
        self._send, self._items = trio.open_memory_channel[ReceivedItem](math.inf)
        self._sequence = 0

    def put(self, key: str, value: Any, *, attempt: int = 1) -> ReceivedItem:
        self._sequence += 1
        item = ReceivedItem(
            StreamId("orders", key),
            self.codec.dumps(value),
            f"m{self._sequence}",
            SequenceToken(self.partition, self._sequence),
            attempt=attempt,
        )
        self._send.send_nowait(item)
        return item

    def redeliver(self, item: ReceivedItem) -> None:
        self._send.send_nowait(item)

    async def receive(self, max_items: int, /) -> list[ReceivedItem]:
        self.receives += 1
        self.asked.append(max_items)
        batch = [await self._items.receive()]
        while len(batch) < max_items:
            try:
                batch.append(self._items.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def ack(self, items: Sequence[ReceivedItem], /) -> None:
        await trio.lowlevel.checkpoint()
        self.acked += items

    async def nak(self, item: ReceivedItem, delay: float, /) -> None:
        await trio.lowlevel.checkpoint()
        self.naks.append((item, delay))

    async def term(self, item: ReceivedItem, reason: str, /) -> None:
        await trio.lowlevel.checkpoint()
        self.terms.append((item, reason))

    async def in_progress(self, items: Sequence[ReceivedItem], /) -> None:
        await trio.lowlevel.checkpoint()
        self.in_progress_calls.append(list(items))
        self.in_progress_times.append(trio.current_time())

    def targets(self, stream_id: StreamId, /) -> list[Target]:
        return self.subscribers

    async def publish_encoded(
        self, stream_id: StreamId, items: list[EncodedItem], /
    ) -> list[SequenceToken]:
        await trio.lowlevel.checkpoint()
        if self.refuse_publish:
            raise OSError("the dead-letter stream is down")
        self.published += [(stream_id, item) for item in items]
        return [SequenceToken(0, 1000 + len(self.published)) for _ in items]


class Recorder:
    """A subscriber that records ``(value, token, time)`` per call; ``fail(value, n)``
    makes the next *n* calls with *value* raise; ``block(value)`` holds them at a gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, SequenceToken, float]] = []
        self.returned: list[Any] = []
        self.failures: dict[Any, int] = {}
        self.gates: dict[Any, trio.Event] = {}
        self.started: dict[Any, trio.Event] = {}

    def target(self) -> Target:
        return Target("recorder", "recorder", int, self.call)

    def fail(self, value: Any, times: int) -> None:
        self.failures[value] = times

    def block(self, value: Any) -> trio.Event:
        self.started[value] = trio.Event()
        gate = self.gates[value] = trio.Event()
        return gate

    async def call(self, value: Any, token: SequenceToken) -> None:
        self.calls.append((value, token, trio.current_time()))
        if value in self.started:
            self.started[value].set()
        if value in self.gates:
            await self.gates[value].wait()
        if self.failures.get(value, 0):
            self.failures[value] -= 1
            raise ValueError(f"bad value {value}")
        self.returned.append(value)

    def values(self) -> list[Any]:
        return [value for value, _, _ in self.calls]


async def until(predicate: Callable[[], bool], limit: float = 600) -> None:
    """Poll *predicate* (the host's records) until it holds; fail after *limit* seconds."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling values, not waiting for one event
            await trio.sleep(0.01)


def options(**overrides: Any) -> StreamOptions:
    return StreamOptions(**{"backoff": 1.0, "backoff_multiplier": 2.0, **overrides})


def recorded(**overrides: Any) -> tuple[FakeHost, Recorder]:
    """A host with these options and one subscriber, a :class:`Recorder`."""
    host, recorder = FakeHost(options(**overrides)), Recorder()
    host.subscribers.append(recorder.target())
    return host, recorder


@contextlib.asynccontextmanager
async def agent_of(host: AgentHost) -> AsyncIterator[PartitionAgent]:
    """``async with agent_of(host) as agent``: the agent runs inside, stops on the way out."""
    agent = PartitionAgent(host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        try:
            yield agent
        finally:
            await agent.stop()


def test_the_fake_is_an_agent_host() -> None:
    host: AgentHost = FakeHost(options())  # mypy checks the fake against the protocol
    assert PartitionAgent(host).partition == 0


async def test_keys_keep_their_order_and_do_not_wait_for_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded()
    gate = recorder.block(1)
    async with agent_of(host):
        a = [host.put("a", 1), host.put("a", 2), host.put("a", 3)]
        b = [host.put("b", 10), host.put("b", 11)]
        await until(lambda: recorder.returned == [10, 11])
        assert sorted(recorder.values()) == [1, 10, 11]  # "a" waits at its 1st item, "b" not
        gate.set()
        await until(lambda: len(host.acked) == 5)
    assert [v for v in recorder.values() if v < 10] == [1, 2, 3]
    assert [item.token for item in host.acked if item.stream_id.key == "a"] == [i.token for i in a]
    assert sorted(host.acked, key=lambda i: i.token) == [*a, *b]
    assert host.naks == []
    assert host.terms == []


async def test_ack_only_after_the_handler_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded()
    gate = recorder.block(1)
    async with agent_of(host) as agent:
        item = host.put("k", 1)
        await recorder.started[1].wait()
        await trio.testing.wait_all_tasks_blocked()
        assert host.acked == []
        assert list(agent.held.values()) == [item]
        gate.set()
        await until(lambda: host.acked == [item])
        assert agent.held == {}
    assert host.counts["acked"] == 1
    assert host.counts["delivered"] == 1


async def test_retries_with_backoff_hold_the_key_then_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(max_deliveries=5)
    recorder.fail(1, 2)
    async with agent_of(host):
        start = trio.current_time()
        first, second = host.put("k", 1), host.put("k", 2)
        other = host.put("other", 9)
        await until(lambda: len(host.acked) == 3)
    times = [at - start for value, _, at in recorder.calls if value == 1]
    assert times == pytest.approx([0, 1, 3], abs=0.05)  # backoff 1 s, then 2 s
    # the key's next item waited for the retried one; another key did not
    values = recorder.values()
    assert [v for v in values if v != 9] == [1, 1, 1, 2]
    assert values.index(9) < 2
    assert [i.token for i in host.acked if i.stream_id.key == "k"] == [first.token, second.token]
    assert other in host.acked
    assert (host.counts["failed"], host.counts["redelivered"]) == (2, 2)
    assert host.naks == []
    assert host.terms == []


async def test_a_retry_does_not_call_subscribers_that_returned_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = FakeHost(options())
    good, flaky = Recorder(), Recorder()
    host.subscribers += [
        Target("good", "good", int, good.call),
        Target("flaky", "flaky", int, flaky.call),
    ]
    flaky.fail(1, 1)
    async with agent_of(host):
        host.put("k", 1)
        await until(lambda: len(host.acked) == 1)
    assert (good.values(), flaky.values()) == ([1], [1, 1])


async def test_dead_letter_after_max_deliveries_then_the_key_moves_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(max_deliveries=3)
    recorder.fail(1, 100)
    async with agent_of(host):
        bad, good = host.put("k", 1), host.put("k", 2)
        await until(lambda: host.acked == [good])
    assert recorder.values() == [1, 1, 1, 2]
    ((stream_id, encoded),) = host.published
    assert stream_id == StreamId("dead-letters", "k")
    assert encoded.msg_id == f"dead-letter:0:{bad.token.sequence}"
    letter = host.codec.loads(encoded.data, DeadLetter)
    assert (letter.token, letter.attempts, letter.data) == (bad.token, 3, bad.data)
    assert "recorder: ValueError: bad value 1" in letter.error
    ((termed, reason),) = host.terms
    assert termed == bad
    assert reason == letter.error
    assert host.counts["dead_lettered"] == 1


async def test_attempts_made_before_count_against_max_deliveries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(max_deliveries=3)
    recorder.fail(1, 100)
    async with agent_of(host):
        host.put("k", 1, attempt=3)  # delivered twice before (another silo, say)
        await until(lambda: len(host.terms) == 1)
    assert recorder.values() == [1]
    assert host.counts["redelivered"] == 1  # the adapter's redelivery is counted


async def test_a_dead_letter_that_cannot_be_published_gives_the_item_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(max_deliveries=1)
    recorder.fail(1, 100)
    host.refuse_publish = True
    async with agent_of(host):
        item = host.put("k", 1)
        await until(lambda: len(host.naks) == 1)
    assert host.naks == [(item, 1.0)]  # it comes back after the first retry delay
    assert host.terms == []
    assert host.counts["dead_lettered"] == 0


async def test_stop_drains_running_keys_and_gives_the_rest_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(drain_timeout=5.0)
    finishing, stuck = recorder.block(1), recorder.block(20)
    async with trio.open_nursery() as nursery:
        agent = PartitionAgent(host)
        nursery.start_soon(agent.run)
        running, queued = host.put("a", 1), host.put("a", 2)
        never = host.put("b", 20)
        await recorder.started[1].wait()
        await recorder.started[20].wait()
        stopped = trio.Event()

        async def stop() -> None:
            await agent.stop()
            stopped.set()

        nursery.start_soon(stop)
        await trio.testing.wait_all_tasks_blocked()
        finishing.set()  # within drain_timeout: its item is acked
        with trio.fail_after(60):
            await stopped.wait()
    assert not stuck.is_set()
    assert host.acked == [running]
    # what did not finish goes back at once: the key's queued item, the cancelled one
    assert sorted(host.naks, key=lambda n: n[0].token) == [(queued, 0.0), (never, 0.0)]
    assert sorted(recorder.values()) == [1, 20]  # the queued item was not started
    assert agent.held == {}


async def test_an_item_the_adapter_redelivers_while_held_is_not_delivered_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded()
    gate = recorder.block(1)
    async with agent_of(host):
        item = host.put("k", 1)
        await recorder.started[1].wait()
        host.redeliver(item)  # its ack wait ran out, say
        await until(lambda: host.receives >= 3)  # it was received again, and dropped
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        await until(lambda: host.acked == [item])
    assert recorder.values() == [1]


async def test_held_items_are_kept_alive_while_their_handlers_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = FakeHost(options(), progress_interval=10.0)
    recorder = Recorder()
    host.subscribers.append(recorder.target())
    gate = recorder.block(1)
    async with agent_of(host):
        item = host.put("k", 1)
        await until(lambda: len(host.in_progress_calls) >= 3)
        assert all(call == [item] for call in host.in_progress_calls)
        gate.set()
        await until(lambda: host.acked == [item])


async def test_renewals_go_only_to_items_held_an_interval_and_often_enough(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = FakeHost(options(), progress_interval=10.0)
    recorder = Recorder()
    host.subscribers.append(recorder.target())
    slow, quick = recorder.block(1), recorder.block(2)
    async with agent_of(host):
        start = trio.current_time()
        held = host.put("slow", 1)
        await trio.sleep(5)
        host.put("quick", 2)
        await trio.sleep(7)  # held across t = 10 s, but less than an interval
        quick.set()
        await until(lambda: len(host.acked) == 1)
        await trio.sleep(97)
        slow.set()
        await until(lambda: len(host.acked) == 2)
        await trio.sleep(100)  # acked: renewed no more
    assert host.in_progress_calls
    assert all(call == [held] for call in host.in_progress_calls)
    # renewed once held an interval, then at most 1.5 intervals apart (ack_wait is 3)
    times = [start, *host.in_progress_times]
    assert times[1] - start >= 10
    assert max(b - a for a, b in itertools.pairwise(times)) <= 15
    assert len(host.in_progress_calls) == 10  # 109 s held: one renewal per 10 s after 10 s


async def test_asks_for_a_batch_and_receives_until_it_is_filled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, _ = recorded(batch_size=4, max_in_flight=8)
    async with agent_of(host):
        for n in range(5):  # one at a time: each receive returns one item
            host.put(f"k{n}", n)
            await until(lambda: len(host.acked) == n + 1)  # noqa: B023
        await trio.testing.wait_all_tasks_blocked()
    assert host.asked == [4, 3, 2, 1, 4, 3]


async def test_a_full_window_asks_again_only_for_a_refill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(batch_size=4, max_in_flight=8)
    gates = [recorder.block(n) for n in range(12)]
    async with agent_of(host) as agent:
        for n in range(12):
            host.put(f"k{n}", n)
        await until(lambda: len(recorder.calls) == 8)
        await trio.testing.wait_all_tasks_blocked()
        assert (host.asked, agent.free) == ([4, 4], 0)
        for gate in gates[:3]:
            gate.set()
        await until(lambda: len(host.acked) == 3)
        await trio.testing.wait_all_tasks_blocked()
        assert host.asked == [4, 4]  # 3 free slots: less than a refill (4)
        gates[3].set()
        await until(lambda: len(recorder.calls) == 12)
        assert host.asked == [4, 4, 4]
        for gate in gates[4:]:
            gate.set()
        await until(lambda: len(host.acked) == 12)
        await trio.testing.wait_all_tasks_blocked()
    assert host.asked == [4, 4, 4, 4]  # the last one waits for items that never come


async def test_keys_wait_for_a_worker_in_the_order_they_came(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(max_concurrent_keys=2)
    gates = {value: recorder.block(value) for value in (1, 2, 3, 4)}
    async with agent_of(host):
        for value, key in ((1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "a")):
            host.put(key, value)
        await until(lambda: len(recorder.calls) == 2)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.values() == [1, 2]  # two workers
        gates[2].set()  # b's worker takes c, the next key waiting
        await until(lambda: len(recorder.calls) == 3)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.values() == [1, 2, 3]
        gates[1].set()  # a's worker goes on with a's next item (5), then takes d
        await until(lambda: len(recorder.calls) == 5)
        gates[3].set()
        gates[4].set()
        await until(lambda: len(host.acked) == 5)
    assert recorder.values() == [1, 2, 3, 5, 4]


async def test_stop_gives_back_keys_no_worker_took(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(max_concurrent_keys=1, drain_timeout=5.0)
    gate = recorder.block(1)
    async with trio.open_nursery() as nursery:
        agent = PartitionAgent(host)
        nursery.start_soon(agent.run)
        running, waiting = host.put("a", 1), host.put("b", 2)
        await recorder.started[1].wait()
        stopped = trio.Event()

        async def stop() -> None:
            await agent.stop()
            stopped.set()

        nursery.start_soon(stop)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        with trio.fail_after(60):
            await stopped.wait()
    assert host.acked == [running]
    assert host.naks == [(waiting, 0.0)]
    assert recorder.values() == [1]
    assert agent.held == {}


async def test_asks_only_while_few_keys_wait_for_a_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # one worker, asks of 2: it stops asking once 1 + 2 keys wait for the worker
    host, recorder = recorded(max_concurrent_keys=1, batch_size=2, max_in_flight=100)
    gate = recorder.block(0)
    async with agent_of(host) as agent:
        for n in range(20):
            host.put(f"k{n}", n)
        await recorder.started[0].wait()
        await trio.testing.wait_all_tasks_blocked()
        assert host.asked == [2, 2]
        assert len(agent.held) == 4  # the others wait in the stream, not in the silo
        gate.set()
        await until(lambda: len(host.acked) == 20)
    assert recorder.values() == list(range(20))


async def test_a_key_with_many_items_still_fills_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host, recorder = recorded(max_concurrent_keys=1, batch_size=2, max_in_flight=8)
    gate = recorder.block(0)
    async with agent_of(host) as agent:
        for n in range(12):
            host.put("hot" if n < 10 else f"k{n}", n)
        await recorder.started[0].wait()
        await trio.testing.wait_all_tasks_blocked()
        assert host.asked == [2, 2, 2, 2]  # no key waits for a worker: it asks on
        assert len(agent.held) == 8
        gate.set()
        await until(lambda: len(host.acked) == 12)
    assert recorder.values() == list(range(12))
