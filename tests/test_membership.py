"""Membership: the in-memory table (the conformance kit), the protocol's specifics, and
the per-silo service, on a virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

from trio_grains import MembershipRow, MembershipRows, MembershipTable
from trio_grains._cluster.membership import (
    MemoryMembershipTable,
    SiloAlreadyJoinedError,
    SiloDeclaredDeadError,
)
from trio_grains._cluster.membership_service import MembershipService
from trio_grains._cluster.silo_entries import MembershipView, SiloEntry, SiloStatus
from trio_grains.testing import MEMBERSHIP_CHECKS, check_membership_table

INTERVAL = 1.0
DEAD_AFTER = 5.0


def _entry(silo_id: str, *roles: str) -> SiloEntry:
    return SiloEntry(silo_id, f"grains.silo.{silo_id}", roles=frozenset(roles))


def _service(table: MemoryMembershipTable, silo_id: str) -> MembershipService:
    return MembershipService(
        table, _entry(silo_id), heartbeat_interval=INTERVAL, dead_after=DEAD_AFTER
    )


def _active_ids(view: MembershipView) -> list[str]:
    return [e.silo_id for e in view.active()]


async def test_memory_table_conforms() -> None:
    tables: dict[str, MemoryMembershipTable] = {}

    @asynccontextmanager
    async def open_table(cluster: str) -> AsyncIterator[MembershipTable]:
        yield tables.setdefault(cluster, MemoryMembershipTable())

    await check_membership_table(open_table)
    assert len(tables) > len(MEMBERSHIP_CHECKS)  # some checks open two clusters


@attrs.define(eq=False)
class BrokenTable(MemoryMembershipTable):
    """A table that breaks one rule of the contract, to see the kit name it."""

    broken: str = "insert"

    async def insert_row(self, key: str, data: bytes) -> int | None:
        version = await super().insert_row(key, data)
        if self.broken == "insert" and version is None:  # overwrites: last writer wins
            row = self._rows[key]
            return await super().update_row(key, data, row.version)
        return version

    async def update_row(self, key: str, data: bytes, version: int) -> int | None:
        if self.broken == "update":  # ignores the version
            row = await self.read_row(key)
            return None if row is None else await super().update_row(key, data, row.version)
        return await super().update_row(key, data, version)


@pytest.mark.parametrize(
    ("broken", "check", "rule"),
    [
        ("insert", "insert_if_absent", "must return None"),
        ("update", "update_compare_and_set", "stale version must return None"),
    ],
)
async def test_the_kit_names_the_broken_rule(broken: str, check: str, rule: str) -> None:
    @asynccontextmanager
    async def open_table(cluster: str) -> AsyncIterator[MembershipTable]:
        yield BrokenTable(broken=broken)

    with pytest.raises(AssertionError, match=rule) as info:
        await check_membership_table(open_table)
    assert f"check {check!r}" in str(info.value.__notes__)


async def test_the_protocol_decodes_each_row_version_once() -> None:
    table = MemoryMembershipTable()
    protocol = table.protocol
    assert protocol is table.protocol  # one per table
    await table.join(_entry("a"))
    row = await table.read_row("a")
    assert row is not None
    first = protocol.decode(row)
    assert protocol.decode(row) is first  # cached by (key, version)
    assert protocol.view(MembershipRows({"a": row}, row.version)).get("a") is first
    bad = MembershipRow("a", b"{}", row.version + 1)
    assert protocol.decode(bad) is None
    assert protocol.decode(bad) is None
    assert table.malformed_rows == 1


async def test_a_row_too_large_to_read_back_is_refused_before_writing() -> None:
    table = MemoryMembershipTable()
    fat = SiloEntry("a", "x", grain_types=frozenset(f"type{i:06}" for i in range(10_000)))
    from trio_grains import MembershipError

    with pytest.raises(MembershipError, match="could not be read back"):
        await table.join(fat)
    assert await table.read_row("a") is None


async def test_the_service_refuses_a_row_ttl_shorter_than_its_heartbeats() -> None:
    @attrs.define(eq=False)
    class Expiring(MemoryMembershipTable):
        @property
        def row_ttl(self) -> float:
            return 0.5

    with pytest.raises(ValueError, match="expire"):
        MembershipService(Expiring(), _entry("a"), heartbeat_interval=1, dead_after=5)
    MembershipService(Expiring(), _entry("a"), heartbeat_interval=0.1, dead_after=0.4)


async def test_three_silos_see_each_other(autojump_clock: trio.testing.MockClock) -> None:
    table = MemoryMembershipTable()
    async with _service(table, "a") as a, _service(table, "b") as b, _service(table, "c") as c:
        for service in (a, b, c):
            view = await service.wait_view(lambda v: len(v.active()) == 3)
            assert _active_ids(view) == ["a", "b", "c"]
            assert service.entry.status is SiloStatus.ACTIVE
        versions = []
        for _ in range(3):
            versions.append(a.view.version)
            await trio.sleep(INTERVAL * 2)  # heartbeats keep changing the table
        assert versions == sorted(set(versions))
        assert _active_ids(a.view) == ["a", "b", "c"]  # nobody declared dead
        assert not any(s.declared_dead.is_set() for s in (a, b, c))


async def test_graceful_leave_removes_the_silo(autojump_clock: trio.testing.MockClock) -> None:
    table = MemoryMembershipTable()
    async with _service(table, "a") as a:
        async with _service(table, "b"):
            await a.wait_view(lambda v: _active_ids(v) == ["a", "b"])
        view = await a.wait_view(lambda v: "b" not in v.entries)
        assert _active_ids(view) == ["a"]
        assert a.silos_declared_dead == 0
    assert (await table.snapshot()).entries == {}


async def test_silo_that_stops_heartbeating_is_declared_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = MemoryMembershipTable()
    async with _service(table, "a") as a, _service(table, "b") as b:
        with trio.CancelScope() as crash:
            async with _service(table, "c"):
                await a.wait_view(lambda v: len(v.active()) == 3)
                crash.cancel()  # c vanishes without leaving
                await trio.sleep_forever()
        crashed_at = trio.current_time()
        assert (await table.snapshot()).status_of("c") is SiloStatus.ACTIVE
        for service in (a, b):
            with trio.fail_after(DEAD_AFTER + 2 * INTERVAL):
                await service.wait_view(lambda v: v.status_of("c") is SiloStatus.DEAD)
        assert trio.current_time() - crashed_at <= DEAD_AFTER + 2 * INTERVAL
        assert _active_ids(a.view) == ["a", "b"]
        assert a.silos_declared_dead + b.silos_declared_dead >= 1
        await trio.sleep(DEAD_AFTER * 2)  # the survivors stay alive
        assert _active_ids(a.view) == ["a", "b"]


async def test_silo_declared_dead_by_others_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = MemoryMembershipTable()
    async with _service(table, "a") as a:
        victim = _service(table, "b")
        with pytest.RaisesGroup(pytest.RaisesExc(SiloDeclaredDeadError, match="declared dead")):
            async with victim:
                await a.wait_view(lambda v: len(v.active()) == 2)
                await table.set_status("b", SiloStatus.DEAD)  # e.g. after a long pause
                await trio.sleep_forever()  # the service cancels the body
        assert victim.declared_dead.is_set()
        assert victim.declared_dead_reason == "was declared dead by the cluster"
        # it did not leave: the DEAD row stays for the others to see
        assert (await table.snapshot()).status_of("b") is SiloStatus.DEAD
        assert a.view.status_of("b") is SiloStatus.DEAD


async def test_silo_removed_from_the_table_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = MemoryMembershipTable()
    with pytest.RaisesGroup(SiloDeclaredDeadError):
        async with _service(table, "a"):
            await table.leave("a")  # e.g. its row expired
            await trio.sleep_forever()


async def test_join_of_a_live_duplicate_fails(autojump_clock: trio.testing.MockClock) -> None:
    table = MemoryMembershipTable()
    async with _service(table, "a"):
        with pytest.raises(SiloAlreadyJoinedError):
            async with _service(table, "a"):
                pass  # pragma: no cover


async def test_activate_false_stays_joining(autojump_clock: trio.testing.MockClock) -> None:
    table = MemoryMembershipTable()
    service = MembershipService(
        table, _entry("a"), heartbeat_interval=INTERVAL, dead_after=DEAD_AFTER, activate=False
    )
    async with service:
        assert service.view.status_of("a") is SiloStatus.JOINING
        await trio.sleep(DEAD_AFTER * 2)  # heartbeats keep it alive while it starts
        await service.set_status(SiloStatus.ACTIVE)
        await service.wait_view(lambda v: _active_ids(v) == ["a"])


def test_bad_intervals() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        MembershipService(MemoryMembershipTable(), _entry("a"), heartbeat_interval=2, dead_after=1)


@attrs.define(eq=False)
class StallingWatchTable(MembershipTable):
    """A second face of *inner* whose first watch goes silent after its first rows (a
    lost watch)."""

    inner: MemoryMembershipTable = attrs.field(factory=MemoryMembershipTable)
    watches: int = 0
    refuse_active: bool = False

    async def read_row(self, key: str) -> MembershipRow | None:
        return await self.inner.read_row(key)

    async def insert_row(self, key: str, data: bytes) -> int | None:
        return await self.inner.insert_row(key, data)

    async def update_row(self, key: str, data: bytes, version: int) -> int | None:
        if self.refuse_active and b'"status":"active"' in data:
            raise SiloDeclaredDeadError("refused")
        return await self.inner.update_row(key, data, version)

    async def delete_row(self, key: str, version: int) -> bool:
        return await self.inner.delete_row(key, version)

    async def read_rows(self) -> MembershipRows:
        return await self.inner.read_rows()

    @asynccontextmanager
    async def watch_rows(self) -> AsyncIterator[AsyncIterator[MembershipRows]]:
        self.watches += 1
        async with self.inner.watch_rows() as rows:
            yield rows if self.watches > 1 else _stall_after_first(rows)


async def _stall_after_first(rows: AsyncIterator[MembershipRows]) -> AsyncIterator[MembershipRows]:
    yield await rows.__anext__()
    await trio.sleep_forever()


async def test_a_stale_watch_declares_nobody_dead_and_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stalling = StallingWatchTable()
    async with _service(stalling.inner, "b") as b, _service(stalling, "a") as a:
        await trio.sleep(DEAD_AFTER * 3)
        assert stalling.watches >= 2
        assert (await stalling.snapshot()).status_of("b") is SiloStatus.ACTIVE
        assert _active_ids(a.view) == ["a", "b"]
        old = a.view.version
        await a.wait_view(lambda v: v.version > old)  # fresh views again
        assert not b.declared_dead.is_set()


async def test_a_failed_start_leaves_the_table(autojump_clock: trio.testing.MockClock) -> None:
    table = MemoryMembershipTable()
    with trio.move_on_after(1) as scope:
        async with _service(table, "a") as a:
            await a.wait_view(lambda v: False)  # never
    assert scope.cancelled_caught
    assert (await table.snapshot()).status_of("a") is SiloStatus.ACTIVE
    # cancelled after entering: no leave (a crash); now a failure while entering:
    failing = StallingWatchTable()
    failing.watches = 1  # its watch works, but activation is refused below
    await failing.inner.join(_entry("b"))
    await failing.inner.set_status("b", SiloStatus.DEAD)
    service = _service(failing, "c")
    failing.refuse_active = True
    with pytest.RaisesGroup(pytest.RaisesExc(SiloDeclaredDeadError, match="refused")):
        async with service:
            pass  # pragma: no cover
    assert (await failing.snapshot()).status_of("c") is None


async def test_a_death_learned_by_a_reread_still_fails_the_calls_waiting_on_that_silo() -> None:
    """Locator.alive() re-reads the table for a silo it does not know; if that newer view
    also says another silo died, the calls waiting on the dead one must fail then (they
    used to wait for their response timeout: the follow loop found the view already
    adopted and nothing gone)."""
    from trio_grains import MemoryGrainDirectory
    from trio_grains._cluster.locator import Locator
    from trio_grains._placement import PlacementRegistry, RandomPlacement

    table = MemoryMembershipTable()
    for silo_id in ("a", "b"):
        await table.join(_entry(silo_id))
        await table.set_status(silo_id, SiloStatus.ACTIVE)
    locator = Locator(
        membership=table,
        directory=MemoryGrainDirectory(),
        placement=PlacementRegistry(),
        default_strategy=RandomPlacement(),
        hosted=None,
        self_id=None,
    )
    gone: list[str] = []
    locator.on_gone = lambda silo_id, view: gone.append(silo_id)
    locator.set_view(await table.snapshot())
    await table.set_status("b", SiloStatus.DEAD)
    await table.join(_entry("c"))
    await table.set_status("c", SiloStatus.ACTIVE)
    assert await locator.alive("c")  # unknown to the view: the table is re-read
    assert gone == ["b"]
    locator.set_view(await table.snapshot())  # the watch delivers the same view later
    assert gone == ["b"]  # once
