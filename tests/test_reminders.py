"""Durable reminders: delivery to inactive grains, periods, listing, replacing, errors,
failing handlers and surviving a silo restart (all on Trio's MockClock)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from _shared_reminders import SharedTablePlugin

from trio_grains import (
    ConfigError,
    Grain,
    GrainId,
    GrainMethodError,
    ProviderConfig,
    ReminderTable,
    SiloConfig,
    TickStatus,
    open_silo,
)

TICKS: list[tuple[str, str, TickStatus, float]] = []  # (grain key, name, status, trio time)


@pytest.fixture(autouse=True)
def _clear_ticks() -> None:
    TICKS.clear()
    AlarmGrain.fail_on.clear()


def ticks(name: str | None = None) -> list[float]:
    """The trio times at which ticks (of reminder *name*) were received."""
    return [at for _, n, _, at in TICKS if name is None or n == name]


class AlarmGrain(Grain):
    fail_on: set[str] = set()  # noqa: RUF012 - a test switch shared by every activation

    async def receive_reminder(self, name: str, status: TickStatus) -> None:
        TICKS.append((self.primary_key, name, status, trio.current_time()))
        if name in self.fail_on:
            raise RuntimeError(f"handler of {name} failed")

    async def register(self, name: str, due: float, period: float) -> tuple[float, float]:
        reminder = await self.register_reminder(name, due=due, period=period)
        return reminder.start_at, reminder.period

    async def unregister(self, name: str) -> bool:
        return await self.unregister_reminder(name)

    async def listing(self) -> list[tuple[str, float]]:
        return [(r.name, r.period) for r in await self.get_reminders()]

    async def leave(self) -> None:
        self.deactivate_on_idle()


class SilentGrain(Grain):
    async def register(self) -> None:
        await self.register_reminder("never", due=60, period=60)


# wall_clock=trio.current_time makes the table's wall-clock times equal Trio's (virtual) time.
OPEN = {"grains": [AlarmGrain, SilentGrain], "wall_clock": trio.current_time}


async def test_a_reminder_activates_an_inactive_grain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(**OPEN) as silo:  # type: ignore[arg-type]
        ref = silo.get_grain(AlarmGrain, "a")
        start = trio.current_time()
        await ref.register("wake", 60, 600)
        await ref.leave()
        await trio.testing.wait_all_tasks_blocked()
        assert silo.statistics().activations == 0
        await trio.sleep(61)
        assert ticks() == [start + 60]
        assert silo.statistics().activations == 1
        assert silo.statistics().activations_created == 2
        key, name, status, _ = TICKS[0]
        assert (key, name) == ("a", "wake")
        assert status == TickStatus(start + 60, 600, start + 60)


async def test_ticks_follow_the_period(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(**OPEN) as silo:  # type: ignore[arg-type]
        ref = silo.get_grain(AlarmGrain, "a")
        start = trio.current_time()
        first, period = await ref.register("beat", 10, 60)
        assert (first, period) == (start + 10, 60)
        await trio.sleep(10 + 3 * 60 + 1)
        assert ticks() == [start + 10 + k * 60 for k in range(4)]
        statuses = [status for _, _, status, _ in TICKS]
        assert {s.first_tick_time for s in statuses} == {start + 10}
        assert [s.current_tick_time for s in statuses] == ticks()


async def test_listing_and_unregistering(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(**OPEN) as silo:  # type: ignore[arg-type]
        ref = silo.get_grain(AlarmGrain, "a")
        other = silo.get_grain(AlarmGrain, "b")
        await ref.register("b-reminder", 60, 120)
        await ref.register("a-reminder", 60, 60)
        await other.register("other", 60, 60)
        assert await ref.listing() == [("a-reminder", 60), ("b-reminder", 120)]
        assert await ref.unregister("a-reminder") is True
        assert await ref.unregister("a-reminder") is False
        assert await ref.unregister("never-registered") is False
        assert await ref.listing() == [("b-reminder", 120)]
        assert await other.listing() == [("other", 60)]
        await trio.sleep(130)
        assert ticks("a-reminder") == []
        assert len(ticks("b-reminder")) == 1
        assert len(ticks("other")) == 2


async def test_unregistering_from_receive_reminder_stops_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class OnceGrain(Grain):
        async def receive_reminder(self, name: str, status: TickStatus) -> None:
            TICKS.append((self.primary_key, name, status, trio.current_time()))
            await self.unregister_reminder(name)

        async def start(self) -> None:
            await self.register_reminder("once", due=60, period=60)

    async with open_silo(grains=[OnceGrain], wall_clock=trio.current_time) as silo:
        await silo.get_grain(OnceGrain, "a").start()
        await trio.sleep(600)
        assert len(ticks("once")) == 1
        table: ReminderTable = silo.provider("reminders", "default")
        assert await table.read_all() == []


async def test_re_registering_replaces_the_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(**OPEN) as silo:  # type: ignore[arg-type]
        ref = silo.get_grain(AlarmGrain, "a")
        start = trio.current_time()
        await ref.register("r", 10, 60)
        await ref.register("r", 100, 120)
        assert await ref.listing() == [("r", 120)]
        await trio.sleep(100 + 120 + 1)
        assert ticks("r") == [start + 100, start + 220]
        table: ReminderTable = silo.provider("reminders", "default")
        rows = await table.read_grain(GrainId.create("alarm", "a"))
        assert [(r.name, r.start_at, r.period) for r in rows] == [("r", start + 100, 120)]


async def test_a_period_below_the_minimum_is_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(**OPEN) as silo:  # type: ignore[arg-type]
        ref = silo.get_grain(AlarmGrain, "a")
        with pytest.raises(ConfigError, match="minimum_reminder_period") as info:
            await ref.register("fast", 1, 59)
        assert "59" in str(info.value)
        assert await ref.listing() == []
        await trio.sleep(300)
        assert ticks() == []


async def test_the_minimum_period_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    config = SiloConfig(minimum_reminder_period=5)
    async with open_silo(config, **OPEN) as silo:  # type: ignore[arg-type]
        ref = silo.get_grain(AlarmGrain, "a")
        await ref.register("fast", 5, 5)
        await trio.sleep(21)
        assert len(ticks("fast")) == 4
        with pytest.raises(ConfigError, match="minimum_reminder_period"):
            await ref.register("faster", 1, 4)


async def test_a_grain_without_receive_reminder_cannot_register(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(**OPEN) as silo:  # type: ignore[arg-type]
        with pytest.raises(GrainMethodError, match=r"SilentGrain.*receive_reminder") as info:
            await silo.get_grain(SilentGrain, "a").register()
        assert "'never'" in str(info.value)
        table: ReminderTable = silo.provider("reminders", "default")
        assert await table.read_all() == []


async def test_a_failing_receive_reminder_is_logged_and_the_reminder_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    AlarmGrain.fail_on.add("flaky")
    async with open_silo(**OPEN) as silo:  # type: ignore[arg-type]
        ref = silo.get_grain(AlarmGrain, "a")
        with caplog.at_level(logging.ERROR, logger="trio_grains.reminders"):
            await ref.register("flaky", 60, 60)
            await trio.sleep(181)
        assert len(ticks("flaky")) == 3
        failures = [r for r in caplog.records if r.name == "trio_grains.reminders"]
        assert len(failures) == 3
        assert "'flaky'" in failures[0].getMessage()
        assert "alarm/a" in failures[0].getMessage()
        assert failures[0].exc_info is not None
        assert "handler of flaky failed" in str(failures[0].exc_info[1])
        assert await ref.listing() == [("flaky", 60)]  # still registered


# --- surviving a restart ------------------------------------------------------------------


SHARED = SiloConfig(reminders=ProviderConfig(provider="shared"))


async def test_reminders_survive_a_silo_restart(autojump_clock: trio.testing.MockClock) -> None:
    plugin = SharedTablePlugin()
    start = trio.current_time()
    async with open_silo(SHARED, plugins=[plugin], **OPEN) as silo:  # type: ignore[arg-type]
        await silo.get_grain(AlarmGrain, "a").register("daily", 60, 60)
        await trio.sleep(90)
        assert ticks() == [start + 60]
    # The silo is down for two periods (ticks at 120 and 180 are missed) ...
    await trio.sleep(200 - 90)
    assert ticks() == [start + 60]
    async with open_silo(SHARED, plugins=[plugin], **OPEN) as silo:  # type: ignore[arg-type]
        # ... and a new silo on the same table picks the reminder up without any call.
        await trio.sleep(1)
        assert len(ticks()) == 2  # the missed ticks are not replayed: one late tick
        assert ticks()[1] == start + 200
        await trio.sleep(130)
        assert len(ticks()) == 4  # two more periods
        assert await silo.get_grain(AlarmGrain, "a").listing() == [("daily", 60)]
    assert all(status.first_tick_time == start + 60 for _, _, status, _ in TICKS)


async def test_after_a_restart_the_schedule_keeps_its_phase(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plugin = SharedTablePlugin()
    start = trio.current_time()
    async with open_silo(SHARED, plugins=[plugin], **OPEN) as silo:  # type: ignore[arg-type]
        await silo.get_grain(AlarmGrain, "a").register("daily", 60, 60)
        await trio.sleep(90)
    await trio.sleep(200 - 90)
    async with open_silo(SHARED, plugins=[plugin], **OPEN):  # type: ignore[arg-type]
        await trio.sleep(130)
    # start_at = 60, period 60: whatever happens at the restart (t=200), later ticks are
    # on the schedule, at 240 and 300.
    later = [t - start for t in ticks() if t - start > 200]
    assert later == [240, 300]
    statuses = [status for _, _, status, _ in TICKS if status.current_tick_time - start > 200]
    assert all((s.current_tick_time - s.first_tick_time) % 60 == 0 for s in statuses)
