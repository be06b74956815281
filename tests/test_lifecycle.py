"""Activation lifecycle: activation, failure, idle collection, deactivation, timers, shutdown."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_grains import (
    Grain,
    SiloConfig,
    SiloUnavailableError,
    collection_age,
    open_silo,
)

EVENTS: list[str] = []


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    EVENTS.clear()


class LifeGrain(Grain):
    def __init__(self) -> None:
        EVENTS.append(f"init {self.primary_key}")
        self.calls = 0

    async def on_activate(self) -> None:
        await trio.lowlevel.checkpoint()
        EVENTS.append(f"activate {self.primary_key}")

    async def on_deactivate(self, reason: str) -> None:
        await trio.lowlevel.checkpoint()
        EVENTS.append(f"deactivate {self.primary_key} ({reason})")

    async def touch(self) -> int:
        self.calls += 1
        return self.calls

    async def go_away(self) -> None:
        self.deactivate_on_idle()

    async def stay(self, seconds: float) -> None:
        self.delay_deactivation(seconds)


async def test_activation_runs_init_then_on_activate_once() -> None:
    async with open_silo(grains=[LifeGrain]) as silo:
        ref = silo.get_grain(LifeGrain, "a")
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ref.touch)
        assert await ref.touch() == 6
    assert EVENTS == ["init a", "activate a", "deactivate a (silo shutting down)"]


class FailingGrain(Grain):
    attempts = 0

    async def on_activate(self) -> None:
        type(self).attempts += 1
        await trio.lowlevel.checkpoint()
        if type(self).attempts == 1:
            raise RuntimeError("database is down")

    async def hello(self) -> str:
        return "hello"


async def test_failed_activation_fails_the_call_and_leaves_nothing() -> None:
    FailingGrain.attempts = 0
    async with open_silo(grains=[FailingGrain]) as silo:
        ref = silo.get_grain(FailingGrain, "a")
        with pytest.raises(RuntimeError, match="database is down"):
            await ref.hello()
        assert silo.statistics().activations == 0
        assert await ref.hello() == "hello"  # a fresh activation
        assert FailingGrain.attempts == 2


async def test_calls_queued_behind_a_failed_activation_get_a_fresh_one() -> None:
    FailingGrain.attempts = 0
    async with open_silo(grains=[FailingGrain]) as silo:
        ref = silo.get_grain(FailingGrain, "a")
        results: list[str] = []

        async def call() -> None:
            try:
                results.append(await ref.hello())
            except RuntimeError as exc:
                results.append(str(exc))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call)
        assert sorted(results) == ["database is down", "hello", "hello"]
        assert silo.statistics().activations == 1


async def test_idle_activations_are_collected(autojump_clock: trio.testing.MockClock) -> None:
    config = SiloConfig(collection_age=120, collection_quantum=10)
    async with open_silo(config, grains=[LifeGrain]) as silo:
        await silo.get_grain(LifeGrain, "a").touch()
        await trio.sleep(60)
        await silo.get_grain(LifeGrain, "a").touch()  # activity resets the idle clock
        await trio.sleep(100)
        assert silo.statistics().activations == 1
        await trio.sleep(40)
        assert silo.statistics().activations == 0
        assert EVENTS[-1] == "deactivate a (idle)"
        assert await silo.get_grain(LifeGrain, "a").touch() == 1  # state was per activation


@collection_age(20)
class ShortLived(LifeGrain):
    pass


async def test_collection_age_per_class(autojump_clock: trio.testing.MockClock) -> None:
    config = SiloConfig(collection_age=1000, collection_quantum=5)
    async with open_silo(config, grains=[LifeGrain, ShortLived]) as silo:
        await silo.get_grain(LifeGrain, "long").touch()
        await silo.get_grain(ShortLived, "short").touch()
        await trio.sleep(30)
        assert dict(silo.statistics().activations_by_type) == {"life": 1}


async def test_deactivate_on_idle_and_delay_deactivation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = SiloConfig(collection_age=60, collection_quantum=10)
    async with open_silo(config, grains=[LifeGrain]) as silo:
        ref = silo.get_grain(LifeGrain, "a")
        await ref.touch()
        await ref.go_away()
        await trio.testing.wait_all_tasks_blocked()
        assert silo.statistics().activations == 0
        assert "deactivate a (requested by the grain)" in EVENTS

        await ref.stay(300)
        await trio.sleep(200)
        assert silo.statistics().activations == 1  # kept past the 60 s age
        await trio.sleep(200)
        assert silo.statistics().activations == 0


class Slow(Grain):
    async def on_deactivate(self, reason: str) -> None:
        await trio.sleep(5)
        EVENTS.append("slow deactivated")

    async def touch(self) -> str:
        EVENTS.append(f"touch {id(self)}")
        return "ok"

    async def go_away(self) -> None:
        self.deactivate_on_idle()


async def test_calls_during_deactivation_reach_a_new_activation_afterwards(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Slow]) as silo:
        ref = silo.get_grain(Slow, "a")
        await ref.go_away()
        await trio.testing.wait_all_tasks_blocked(cushion=0.0)
        assert await ref.touch() == "ok"
        # the old activation finished deactivating before the new one ran the call
        assert EVENTS[0] == "slow deactivated"
        assert EVENTS[1].startswith("touch ")


class Ticker(Grain):
    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.active = 0
        self.overlapped = False

    async def start(self, due: float, period: float, fail_on: int = -1) -> None:
        async def tick() -> None:
            self.active += 1
            self.overlapped |= self.active > 1
            self.ticks.append(trio.current_time())
            await trio.sleep(period * 2)  # longer than the period: ticks must not overlap
            self.active -= 1
            if len(self.ticks) == fail_on:
                raise ValueError("tick failed")

        self.timer = self.register_timer(tick, due=due, period=period)

    async def stop(self) -> None:
        self.timer.cancel()

    async def ticks_(self) -> tuple[list[float], bool]:
        return self.ticks, self.overlapped

    async def go_away(self) -> None:
        self.deactivate_on_idle()


async def test_timers_tick_as_turns_without_overlap_and_survive_errors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_silo(grains=[Ticker]) as silo:
        ref = silo.get_grain(Ticker, "a")
        t0 = trio.current_time()
        await ref.start(due=5, period=1, fail_on=2)
        await trio.sleep(14.5)  # ticks at 5, 8, 11, 14 (each 2 s long, then 1 s period)
        ticks, overlapped = await ref.ticks_()
        assert [t - t0 for t in ticks] == [5, 8, 11, 14]
        assert not overlapped
        assert any("timer" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
        await ref.stop()
        await trio.sleep(10)
        assert len((await ref.ticks_())[0]) == 4


async def test_timers_die_with_the_activation(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(grains=[Ticker]) as silo:
        ref = silo.get_grain(Ticker, "a")
        await ref.start(due=1, period=1)
        await trio.sleep(2.5)
        await ref.go_away()
        await trio.sleep(100)
        assert silo.statistics().activations == 0  # the timer did not keep it alive
        ticks, _ = await ref.ticks_()  # a new activation: no timer
        assert ticks == []


class Background(Grain):
    cancelled = False

    async def spawn(self) -> None:
        async def forever() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                type(self).cancelled = True
                raise

        self.start_soon(forever)


async def test_shutdown_deactivates_everything_and_leaves_no_task() -> None:
    Background.cancelled = False
    before = len(trio.lowlevel.current_root_task().child_nurseries[0].child_tasks)
    async with open_silo(grains=[LifeGrain, Background]) as silo:
        for key in "abc":
            await silo.get_grain(LifeGrain, key).touch()
        await silo.get_grain(Background, "x").spawn()
        await trio.testing.wait_all_tasks_blocked()
        saved = silo
    assert Background.cancelled
    assert sorted(e for e in EVENTS if e.startswith("deactivate")) == [
        f"deactivate {k} (silo shutting down)" for k in "abc"
    ]
    assert saved.statistics().activations == 0
    after = len(trio.lowlevel.current_root_task().child_nurseries[0].child_tasks)
    assert after == before
    with pytest.raises(SiloUnavailableError):
        await saved.get_grain(LifeGrain, "a").touch()


async def test_exception_in_the_block_is_not_wrapped() -> None:
    with pytest.raises(KeyError, match="mine"):
        async with open_silo(grains=[LifeGrain]):
            raise KeyError("mine")


class TimerDrop(Grain):
    def __init__(self) -> None:
        self.ticks = 0
        self.interleaved_ticks = 0

    async def start(self, interleave: bool) -> None:
        async def tick() -> None:
            if interleave:
                self.interleaved_ticks += 1
            else:
                self.ticks += 1

        self.timer = self.register_timer(tick, due=1, period=1, interleave=interleave)

    async def hold(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def stop(self) -> None:
        self.timer.cancel()

    async def counts(self) -> tuple[int, int]:
        return self.ticks, self.interleaved_ticks


async def test_cancelling_a_timer_drops_its_waiting_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[TimerDrop]) as silo:
        ref = silo.get_grain(TimerDrop, "a")
        await ref.start(False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.hold, 5)  # the tick at t=1 waits behind this turn
            await trio.sleep(2)
            nursery.start_soon(ref.stop)  # queued behind the hold too, but cancel it now:
            timer = silo.catalog.lookup(ref.grain_id).grain.timer  # type: ignore[union-attr]
            timer.cancel()
        await trio.sleep(10)
        assert await ref.counts() == (0, 0)


async def test_interleaving_timer_ticks_while_the_activation_task_runs_a_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[TimerDrop]) as silo:
        ref = silo.get_grain(TimerDrop, "a")
        await ref.start(True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.hold, 0.5)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ref.hold, 10)  # queued: runs in the activation's task
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        _, interleaved = await ref.counts()
        assert interleaved >= 4  # ticks at 1..5 s went on beside the 10 s turn


class Stuck(Grain):
    async def hang(self) -> None:
        await trio.sleep_forever()


async def test_shutdown_that_gives_up_says_so(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = SiloConfig(deactivation_timeout=2)
    async with trio.open_nursery() as nursery:
        async with open_silo(config, grains=[Stuck]) as silo:
            nursery.start_soon(silo.get_grain(Stuck, "a").hang)  # a turn in an outside task
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("gave up" in w and "stuck/a" in w for w in warnings)


def test_lifecycle_hooks_with_the_wrong_signature_fail_at_registration() -> None:
    from trio_grains import GrainTypeError
    from trio_grains._grain import class_info

    class NoReason(Grain):
        async def on_deactivate(self) -> None:  # type: ignore[override]
            pass

    class NotAsync(Grain):
        def on_activate(self) -> None:  # type: ignore[override]
            pass

    with pytest.raises(GrainTypeError, match=r"NoReason.on_deactivate must accept \(self, reason"):
        class_info(NoReason)
    with pytest.raises(GrainTypeError, match=r"NotAsync.on_activate must be 'async def"):
        class_info(NotAsync)
