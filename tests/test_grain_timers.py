"""Grain timers (``trio_grains/_timers.py``): ticks are turns through the mailbox.

The rest of the contract (ticks never overlap one another, an exception is logged and the
timer goes on, timers die with their activation, cancel drops a waiting tick, interleaving
ticks) is tested in ``test_lifecycle.py``. Times here are the MockClock's.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from trio_grains import Grain, GrainTimer, SiloConfig, open_silo


class Clockwork(Grain):
    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.turns: list[tuple[float, float]] = []  # (start, end) of each grain call that held
        self.running = 0  # turns and ticks running now
        self.most_running = 0
        self.timer: GrainTimer | None = None

    def _enter(self) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)

    async def _tick(self) -> None:
        self._enter()
        self.ticks.append(trio.current_time())
        await trio.sleep(0.25)  # a tick that takes time: a turn arriving now must wait
        self.running -= 1

    async def start(
        self,
        due: float,
        period: float = math.inf,
        keep_alive: bool = False,
        name: str | None = None,
    ) -> str:
        self.timer = self.register_timer(
            self._tick, due=due, period=period, keep_alive=keep_alive, name=name
        )
        return self.timer.name

    async def stop(self) -> bool:
        assert self.timer is not None
        self.timer.cancel()
        return self.timer.cancelled

    async def hold(self, seconds: float) -> None:
        self._enter()
        start = trio.current_time()
        await trio.sleep(seconds)
        self.turns.append((start, trio.current_time()))
        self.running -= 1

    async def report(self) -> tuple[list[float], list[tuple[float, float]], int]:
        return self.ticks, self.turns, self.most_running


class SelfStopping(Grain):
    def __init__(self) -> None:
        self.ticks = 0
        self.finished = 0

    async def start(self) -> None:
        async def tick() -> None:
            self.ticks += 1
            timer.cancel()  # from inside the running tick: this tick still finishes
            await trio.sleep(0.5)
            self.finished += 1

        timer = self.register_timer(tick, due=1, period=1)

    async def counts(self) -> tuple[int, int]:
        return self.ticks, self.finished


@pytest.mark.parametrize(("due", "period"), [(-1, 1), (0, 0), (0, -5), (0, math.nan)])
async def test_a_timer_needs_a_due_time_and_a_positive_period(due: float, period: float) -> None:
    async with open_silo(grains=[Clockwork]) as silo:
        with pytest.raises(ValueError, match="due >= 0 and period > 0"):
            await silo.get_grain(Clockwork, "a").start(due, period)
        # nothing was started: the activation serves on
        assert (await silo.get_grain(Clockwork, "a").report())[0] == []


async def test_without_a_period_a_timer_ticks_once_at_its_due_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Clockwork]) as silo:
        ref = silo.get_grain(Clockwork, "a")
        start = trio.current_time()
        await ref.start(due=3)
        await trio.sleep(100)
        ticks, _, _ = await ref.report()
    assert [t - start for t in ticks] == [pytest.approx(3)]


async def test_ticks_come_every_period_after_the_previous_tick_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Clockwork]) as silo:
        ref = silo.get_grain(Clockwork, "a")
        start = trio.current_time()
        await ref.start(due=1, period=2)
        await trio.sleep(7)
        ticks, _, _ = await ref.report()
    # each tick takes 0.25 s, then the period starts: 1, 3.25, 5.5
    assert [t - start for t in ticks] == [pytest.approx(x) for x in (1, 3.25, 5.5)]


async def test_a_tick_never_overlaps_a_turn(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(grains=[Clockwork]) as silo:
        ref = silo.get_grain(Clockwork, "a")
        start = trio.current_time()
        await ref.start(due=1, period=0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.hold, 5)  # the tick due at 1 waits behind this turn
            await trio.sleep(7)
            for _ in range(3):  # and these turns wait behind ticks
                nursery.start_soon(ref.hold, 0.3)
                await trio.sleep(0.4)
        await ref.stop()
        ticks, turns, most_running = await ref.report()
    assert most_running == 1
    assert ticks[0] - start == pytest.approx(5)  # when the 5 s turn ended
    for tick in ticks:
        assert not any(begin < tick < end for begin, end in turns)
    assert len(turns) == 4


async def test_a_timer_cancelled_before_it_is_due_never_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Clockwork]) as silo:
        ref = silo.get_grain(Clockwork, "a")
        await ref.start(due=10, period=1)
        await trio.sleep(5)
        assert await ref.stop() is True
        await trio.sleep(100)
        ticks, _, _ = await ref.report()
    assert ticks == []


async def test_a_tick_that_cancels_its_own_timer_finishes_and_is_the_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[SelfStopping]) as silo:
        ref = silo.get_grain(SelfStopping, "a")
        await ref.start()
        await trio.sleep(20)
        assert await ref.counts() == (1, 1)


async def test_a_timer_is_named_by_its_callback_unless_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Clockwork]) as silo:
        ref = silo.get_grain(Clockwork, "a")
        assert await ref.start(due=1, name="heartbeat") == "heartbeat"
        assert await ref.start(due=1) == "Clockwork._tick"


@pytest.mark.parametrize("keep_alive", [False, True])
async def test_only_keep_alive_ticks_count_as_activity(
    autojump_clock: trio.testing.MockClock, keep_alive: bool
) -> None:
    config = SiloConfig(collection_age=60, collection_quantum=10)
    async with open_silo(config, grains=[Clockwork]) as silo:
        await silo.get_grain(Clockwork, "a").start(due=5, period=5, keep_alive=keep_alive)
        await trio.sleep(300)  # idle but for the ticks, five times the collection age
        assert silo.statistics().activations == (1 if keep_alive else 0)
