"""Turn semantics: one turn at a time, reentrancy, interleaving, read-only, one-way, workers.

Grains here record which turns overlap; each test drives many concurrent callers through
both paths of the runtime (turns stolen by an idle caller, and queued turns run by the
activation's task) and checks the overlaps allowed by Orleans' rules, no more, no fewer.
"""

from __future__ import annotations

import contextvars
import logging

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_grains import (
    Grain,
    GrainCallTimeoutError,
    SiloConfig,
    always_interleave,
    one_way,
    open_silo,
    read_only,
    reentrant,
    stateless_worker,
)


class Tracker:
    """Counts overlapping turns per kind."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.max_total = 0
        self.max_writers = 0
        self.max_readers = 0
        self.overlap_reader_writer = False
        self.done = 0

    async def turn(self, kind: str, yields: int = 3) -> None:
        self.running[kind] = self.running.get(kind, 0) + 1
        self._observe()
        for _ in range(yields):
            await trio.lowlevel.checkpoint()
            self._observe()
        self.running[kind] -= 1
        self.done += 1

    def _observe(self) -> None:
        writers = self.running.get("write", 0)
        readers = self.running.get("read", 0)
        total = sum(self.running.values())
        self.max_total = max(self.max_total, total)
        self.max_writers = max(self.max_writers, writers)
        self.max_readers = max(self.max_readers, readers)
        if writers and readers:
            self.overlap_reader_writer = True


class PlainGrain(Grain):
    def __init__(self) -> None:
        self.t = Tracker()

    async def write(self) -> None:
        await self.t.turn("write")

    @read_only
    async def read(self) -> None:
        await self.t.turn("read")

    @always_interleave
    async def peek(self) -> None:
        await self.t.turn("peek")

    async def stats(self) -> tuple[int, int, int, bool, int]:
        t = self.t
        return t.max_total, t.max_writers, t.max_readers, t.overlap_reader_writer, t.done


@reentrant
class ReentrantGrain(PlainGrain):
    pass


async def _hammer(ref: PlainGrain, methods: list[str], callers: int = 20, calls: int = 10) -> None:
    async def caller(i: int) -> None:
        for j in range(calls):
            await getattr(ref, methods[(i + j) % len(methods)])()

    async with trio.open_nursery() as nursery:
        for i in range(callers):
            nursery.start_soon(caller, i)


async def test_non_reentrant_grain_never_interleaves_turns() -> None:
    async with open_silo(grains=[PlainGrain]) as silo:
        ref = silo.get_grain(PlainGrain, "a")
        await _hammer(ref, ["write"])
        max_total, max_writers, _, _, done = await ref.stats()
        assert done == 200
        assert max_total == 1
        assert max_writers == 1


async def test_reentrant_grain_interleaves() -> None:
    async with open_silo(grains=[ReentrantGrain]) as silo:
        ref = silo.get_grain(ReentrantGrain, "a")
        await _hammer(ref, ["write"])
        _, max_writers, _, _, done = await ref.stats()
        assert done == 200
        assert max_writers > 1


async def test_read_only_methods_interleave_only_with_each_other() -> None:
    async with open_silo(grains=[PlainGrain]) as silo:
        ref = silo.get_grain(PlainGrain, "a")
        await _hammer(ref, ["read"])
        _, _, max_readers, _, _ = await ref.stats()
        assert max_readers > 1  # readers alone do interleave

        ref2 = silo.get_grain(PlainGrain, "b")
        await _hammer(ref2, ["read", "write", "read"])
        _, max_writers, max_readers, overlap, done = await ref2.stats()
        assert done == 200
        assert max_writers == 1
        assert not overlap  # a writer never runs beside a reader
        assert max_readers > 1


async def test_always_interleave_runs_beside_a_running_turn() -> None:
    async with open_silo(grains=[PlainGrain]) as silo:
        ref = silo.get_grain(PlainGrain, "a")
        await _hammer(ref, ["write", "peek"])
        max_total, max_writers, _, _, done = await ref.stats()
        assert done == 200
        assert max_writers == 1
        assert max_total > 1


class Ordered(Grain):
    def __init__(self) -> None:
        self.seen: list[int] = []

    async def add(self, i: int) -> None:
        await trio.lowlevel.checkpoint()
        self.seen.append(i)

    async def get(self) -> list[int]:
        return self.seen


async def test_queued_calls_run_in_arrival_order() -> None:
    async with open_silo(grains=[Ordered]) as silo:
        ref = silo.get_grain(Ordered, "a")
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(ref.add, i)
                await trio.testing.wait_all_tasks_blocked()
        assert await ref.get() == list(range(50))


class CycleA(Grain):
    async def ping(self, depth: int) -> int:
        return await self.get_grain(CycleB, self.primary_key).pong(depth)

    async def leaf(self) -> int:
        return 1


class CycleB(Grain):
    async def pong(self, depth: int) -> int:
        return await self.get_grain(CycleA, self.primary_key).leaf() + depth


async def test_call_cycle_between_non_reentrant_grains_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = SiloConfig(response_timeout=5)
    async with open_silo(config, grains=[CycleA, CycleB]) as silo:
        start = trio.current_time()
        with pytest.raises(GrainCallTimeoutError, match="deadlocked in a call cycle"):
            await silo.get_grain(CycleA, "x").ping(1)
        assert 5 <= trio.current_time() - start <= 6
        # the grains recover: a call after the timeout works
        assert await silo.get_grain(CycleA, "x").leaf() == 1


@reentrant
class LoopA(Grain):
    async def ping(self, depth: int) -> int:
        return await self.get_grain(LoopB, self.primary_key).pong(depth)

    async def leaf(self) -> int:
        return 1


class LoopB(Grain):
    async def pong(self, depth: int) -> int:
        return await self.get_grain(LoopA, self.primary_key).leaf() + depth


async def test_reentrant_grain_breaks_the_cycle() -> None:
    async with open_silo(grains=[LoopA, LoopB]) as silo:
        assert await silo.get_grain(LoopA, "x").ping(41) == 42


class Sleeper(Grain):
    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    async def nap(self, seconds: float) -> None:
        self.started += 1
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.finished += 1

    @always_interleave
    async def counts(self) -> tuple[int, int, int]:
        return self.started, self.finished, self.cancelled


async def test_cancelled_caller_cancels_its_turn_on_both_paths(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Sleeper]) as silo:
        ref = silo.get_grain(Sleeper, "a")
        # path 1: idle grain, the turn runs in the caller's task
        with trio.move_on_after(1):
            await ref.nap(100)
        assert await ref.counts() == (1, 0, 1)
        # path 2: busy grain, the second call is queued then run by the activation's task
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.nap, 2)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(3):
                await ref.nap(100)  # queued behind the first; starts at t=2, cancelled at t=3
        assert await ref.counts() == (3, 1, 2)
        # a queued call whose caller gives up before it starts never runs
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.nap, 5)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(1):
                await ref.nap(100)
        assert await ref.counts() == (4, 2, 2)


class OneWay(Grain):
    def __init__(self) -> None:
        self.events: list[str] = []

    @one_way
    async def fire(self, tag: str) -> None:
        await trio.sleep(1)
        self.events.append(tag)
        if tag == "bad":
            raise ValueError("one-way failure")

    async def events_(self) -> list[str]:
        return self.events


async def test_one_way_calls_do_not_wait_and_log_errors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_silo(grains=[OneWay]) as silo:
        ref = silo.get_grain(OneWay, "a")
        start = trio.current_time()
        assert await ref.fire("a") is None
        assert await ref.fire("bad") is None
        assert trio.current_time() == start  # returned at once
        assert await ref.events_() == ["a", "bad"]  # queued behind both
        assert trio.current_time() - start == pytest.approx(2)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("one-way call" in r.getMessage() for r in errors)


@stateless_worker(max_local=3)
class Worker(Grain):
    live = 0
    peak = 0

    async def work(self) -> int:
        cls = type(self)
        cls.live += 1
        cls.peak = max(cls.peak, cls.live)
        await trio.sleep(1)
        cls.live -= 1
        return id(self)


async def test_stateless_worker_runs_parallel_activations_up_to_its_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Worker]) as silo:
        ref = silo.get_grain(Worker, "default")
        seen: set[int] = set()

        async def call() -> None:
            seen.add(await ref.work())

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(call)
        assert Worker.peak == 3
        assert len(seen) == 3
        assert silo.statistics().activations == 3


class FirstRead(Grain):
    def __init__(self) -> None:
        self.t = Tracker()

    @read_only
    async def read(self) -> None:
        await self.t.turn("read", yields=5)

    @always_interleave
    async def max_readers(self) -> int:
        return self.t.max_readers


async def test_a_read_only_call_that_activates_lets_other_readers_in() -> None:
    async with open_silo(grains=[FirstRead]) as silo:
        ref = silo.get_grain(FirstRead, "a")
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ref.read)
        assert await ref.max_readers() > 1


class Blocker(Grain):
    def __init__(self) -> None:
        self.pings = 0

    async def hold(self, seconds: float) -> None:
        await trio.sleep(seconds)

    @one_way
    @always_interleave
    async def ping(self) -> None:
        self.pings += 1

    @always_interleave
    async def pings_(self) -> int:
        return self.pings


async def test_interleaving_one_way_call_runs_while_a_queued_turn_holds_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Blocker]) as silo:
        ref = silo.get_grain(Blocker, "a")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.hold, 1)  # runs in the caller's task
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ref.hold, 10)  # queued: will run in the activation's task
            await trio.sleep(2)  # now the activation's task runs the 10 s turn
            await ref.ping()
            await trio.sleep(0.5)
            assert await ref.pings_() == 1  # did not wait for the 10 s turn
            nursery.cancel_scope.cancel()


class ContextGrain(Grain):
    async def hold(self) -> None:
        await trio.sleep(1)

    async def seen(self) -> str:
        return REQUEST.get()


REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST", default="-")


async def test_activation_task_does_not_inherit_a_callers_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[ContextGrain]) as silo:
        ref = silo.get_grain(ContextGrain, "a")
        seen: list[str] = []

        async def caller() -> None:
            REQUEST.set("secret-of-caller")
            seen.append(await ref.seen())  # queued: runs in the activation's task

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.hold)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(caller)
        assert seen == ["-"]
