"""Reminders in a cluster: services sharing one table fire each reminder on exactly one
silo (owner filters), move reminders when the filter changes and pick up rows written by
others (refresh_interval). On Trio's MockClock."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio.testing
from _shared_reminders import SharedTablePlugin

from trio_grains import (
    Grain,
    GrainId,
    ProviderConfig,
    SiloConfig,
    TickStatus,
    open_silo,
)
from trio_grains._builtin.memory import MemoryReminderTable
from trio_grains._cluster.ownership import owner_filter_for
from trio_grains._cluster.silo_entries import MembershipView, SiloEntry, SiloStatus
from trio_grains._reminders import ReminderEntry, ReminderService


class BellGrain(Grain):
    async def receive_reminder(self, name: str, status: TickStatus) -> None:
        FIRED.append((self.primary_key, name))

    async def register(self, name: str) -> None:
        await self.register_reminder(name, due=60, period=60)


FIRED: list[tuple[str, str]] = []


@attrs.define(eq=False)
class RecordingInvoke:
    """Records the reminder calls a service makes, as (silo, grain, reminder name, time)."""

    silo: str
    calls: list[tuple[str, GrainId, str, float]]

    async def __call__(self, grain_id: GrainId, name: str, args: tuple[Any, ...]) -> None:
        assert name == "receive_reminder"
        self.calls.append((self.silo, grain_id, args[0], trio.current_time()))


def service(
    silo: str,
    table: MemoryReminderTable,
    calls: list[tuple[str, GrainId, str, float]],
    refresh_interval: float | None = None,
) -> ReminderService:
    return ReminderService(
        table=table,
        invoke=RecordingInvoke(silo, calls),
        minimum_period=60,
        wall_clock=trio.current_time,
        refresh_interval=refresh_interval,
    )


def two_silo_view() -> MembershipView:
    return MembershipView(
        {s: SiloEntry(s, f"addr-{s}", SiloStatus.ACTIVE) for s in ("a", "b")}, version=1
    )


GRAINS = [GrainId.create("bell", f"g{i}") for i in range(20)]


def fired_where(calls: list[tuple[str, GrainId, str, float]]) -> dict[GrainId, set[str]]:
    where: dict[GrainId, set[str]] = collections.defaultdict(set)
    for silo, grain, _, _ in calls:
        where[grain].add(silo)
    return where


async def test_complementary_filters_fire_each_reminder_on_one_silo(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table, calls = MemoryReminderTable(), []
    a, b = service("a", table, calls, 30), service("b", table, calls, 30)
    view = two_silo_view()
    a.set_owner_filter(owner_filter_for("a", view))
    b.set_owner_filter(owner_filter_for("b", view))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        for grain in GRAINS:  # all registered through a: b finds its rows by refreshing
            await a.register(grain, BellGrain, "ring", due=60, period=60)
        assert a.scheduled() + b.scheduled() < 2 * len(GRAINS)
        await trio.sleep(3 * 60 + 1)
        where = fired_where(calls)
        assert set(where) == set(GRAINS)
        for grain in GRAINS:
            owner = "a" if owner_filter_for("a", view)(grain) else "b"
            assert where[grain] == {owner}
        assert len(calls) == 3 * len(GRAINS)  # three ticks each, none twice
        assert {s for s, *_ in calls} == {"a", "b"}
        assert a.scheduled() + b.scheduled() == len(GRAINS)
        nursery.cancel_scope.cancel()


async def test_changing_the_filter_moves_reminders(autojump_clock: trio.testing.MockClock) -> None:
    table, calls = MemoryReminderTable(), []
    a, b = service("a", table, calls), service("b", table, calls)  # no periodic refresh
    b.set_owner_filter(lambda _: False)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        for grain in GRAINS[:4]:
            await a.register(grain, BellGrain, "ring", due=60, period=60)
        await trio.sleep(61)
        assert {s for s, *_ in calls} == {"a"}
        assert len(calls) == 4
        assert b.scheduled() == 0
        # hand everything to b
        a.set_owner_filter(lambda _: False)
        b.set_owner_filter(lambda _: True)
        assert a.scheduled() == 0
        calls.clear()
        await trio.sleep(120)
        assert {s for s, *_ in calls} == {"b"}
        assert len(calls) == 8  # the schedule kept its phase: ticks at 120 and 180
        assert b.scheduled() == 4
        # and back to one silo owning everything (None: today's behaviour)
        b.set_owner_filter(lambda _: False)
        a.set_owner_filter(None)
        calls.clear()
        await trio.sleep(60)
        assert {s for s, *_ in calls} == {"a"}
        assert len(calls) == 4
        nursery.cancel_scope.cancel()


async def test_register_upserts_but_schedules_only_owned_reminders(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table, calls = MemoryReminderTable(), []
    a = service("a", table, calls)
    a.set_owner_filter(lambda grain: grain == GRAINS[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await a.register(GRAINS[0], BellGrain, "ring", due=60, period=60)
        await a.register(GRAINS[1], BellGrain, "ring", due=60, period=60)
        assert len(await table.read_all()) == 2
        assert a.scheduled() == 1
        assert [r.grain_id for r in await a.list(GRAINS[1])] == [GRAINS[1]]
        await trio.sleep(61)
        assert [(s, g) for s, g, *_ in calls] == [("a", GRAINS[0])]
        nursery.cancel_scope.cancel()


async def test_refresh_picks_up_rows_written_to_the_table(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table, calls = MemoryReminderTable(), []
    a = service("a", table, calls, refresh_interval=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        start = trio.current_time()
        await table.upsert(ReminderEntry(GRAINS[0], "ring", start + 60, 60))
        await trio.sleep(11)
        assert a.scheduled() == 1
        await trio.sleep(60)
        assert [(g, n, t) for _, g, n, t in calls] == [(GRAINS[0], "ring", start + 60)]
        # removed by another silo: gone after the next refresh, no more ticks
        assert await table.remove(GRAINS[0], "ring", None)
        await trio.sleep(11)
        assert a.scheduled() == 0
        await trio.sleep(120)
        assert len(calls) == 1
        # written again by another silo (new etag): scheduled with the new period
        again = trio.current_time()
        await table.upsert(ReminderEntry(GRAINS[0], "ring", again + 30, 120))
        await trio.sleep(30 + 2 * 120 + 1)
        assert [t for *_, t in calls[1:]] == [again + 30, again + 150, again + 270]
        # replaced with a schedule that started in the past: no catching up, it resumes at
        # its next tick
        replaced = trio.current_time()
        await table.upsert(ReminderEntry(GRAINS[0], "ring", replaced - 30, 60))
        calls.clear()
        await trio.sleep(45)
        assert [t for *_, t in calls] == [replaced + 30]
        nursery.cancel_scope.cancel()


async def test_without_a_refresh_interval_rows_of_others_are_not_seen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table, calls = MemoryReminderTable(), []
    a = service("a", table, calls)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await table.upsert(ReminderEntry(GRAINS[0], "ring", trio.current_time() + 60, 60))
        await trio.sleep(200)
        assert calls == []
        a.set_owner_filter(None)  # a filter change re-reads the table
        await trio.sleep(1)
        assert a.scheduled() == 1
        nursery.cancel_scope.cancel()


# --- through silos --------------------------------------------------------------------------


async def test_two_silos_on_one_table_split_the_reminders(
    autojump_clock: trio.testing.MockClock,
) -> None:
    FIRED.clear()
    plugin = SharedTablePlugin()
    config = SiloConfig(reminders=ProviderConfig(provider="shared"))
    opened: Callable[[], Any] = lambda: open_silo(  # noqa: E731
        config, plugins=[plugin], grains=[BellGrain], wall_clock=trio.current_time
    )
    view = two_silo_view()
    async with opened() as silo_a, opened() as silo_b:
        keys = [f"g{i}" for i in range(10)]
        for key in keys:
            await silo_a.get_grain(BellGrain, key).register("ring")
        service_a, service_b = silo_a.catalog.services.reminders, silo_b.catalog.services.reminders
        assert service_a is not None
        assert service_b is not None
        service_a.set_owner_filter(owner_filter_for("a", view))
        service_b.set_owner_filter(owner_filter_for("b", view))
        await trio.sleep(2 * 60 + 1)
        assert sorted(FIRED) == sorted((key, "ring") for key in keys for _ in range(2))
        assert service_a.ticks_delivered + service_b.ticks_delivered == 2 * len(keys)
        assert service_a.ticks_delivered > 0
        assert service_b.ticks_delivered > 0


class SlowTable(MemoryReminderTable):
    """read_all returns the rows as they were when it was called, 5 s later."""

    async def read_all(self) -> list[ReminderEntry]:
        rows = await super().read_all()
        await trio.sleep(5)
        return rows


async def test_a_registration_during_a_refresh_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table, calls = SlowTable(), []
    a = service("a", table, calls, refresh_interval=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)  # the first read ends at 5, the next starts at 15
        await trio.sleep(12)
        await a.register(GRAINS[0], BellGrain, "ring", due=60, period=60)
        assert a.scheduled() == 1
        await trio.sleep(5)  # the refresh read at 15 missed the new row ...
        assert a.scheduled() == 1  # ... and does not drop it
        await trio.sleep(60)
        assert len(calls) == 1
        nursery.cancel_scope.cancel()
