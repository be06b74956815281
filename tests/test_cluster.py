"""Several silos of one cluster in one Trio run (in-memory membership, directory, transport)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import attrs
import pytest
import trio

from trio_grains import (
    Grain,
    GrainInterface,
    GrainMethodError,
    PreferLocalPlacement,
    ProviderConfig,
    SiloConfig,
    SiloUnavailableError,
    grain_type,
    idempotent,
    persistent_state,
    placement,
    remotable,
)
from trio_grains.testing import open_test_cluster

ACTIVATIONS: Counter[str] = Counter()
LIVE: dict[str, str] = {}  # grain id -> silo id of its live activation
DOUBLE: list[str] = []


@attrs.define
class Tally:
    count: int = 0
    activations: int = 0


@grain_type("counter")
class ICounter(GrainInterface):
    async def add(self, n: int) -> int: ...
    async def where(self) -> str: ...


class CounterGrain(Grain, ICounter):
    tally = persistent_state(Tally)

    async def on_activate(self) -> None:
        gid = str(self.grain_id)
        if gid in LIVE:
            DOUBLE.append(gid)
        LIVE[gid] = self._silo_id()
        ACTIVATIONS[gid] += 1
        self.tally.state.activations += 1
        await self.tally.write()

    async def on_deactivate(self, reason: str) -> None:
        LIVE.pop(str(self.grain_id), None)

    def _silo_id(self) -> str:
        return self.runtime_identity

    async def add(self, n: int) -> int:
        self.tally.state.count += n
        await self.tally.write()
        return self.tally.state.count

    async def where(self) -> str:
        return self._silo_id()


@remotable  # an application's exception crosses silos as itself only when declared
class Boom(Exception):
    pass


class EchoGrain(Grain):
    async def echo(self, value: dict[str, list[int]]) -> dict[str, list[int]]:
        return value

    async def fail(self) -> None:
        raise Boom("on purpose")

    async def call_counter(self, other: ICounter, n: int) -> int:
        return await other.add(n)

    @idempotent
    async def settle(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "settled"

    async def slow(self, seconds: float) -> str:
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            CANCELLED.append(str(self.grain_id))
            raise
        return "done"


CANCELLED: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    ACTIVATIONS.clear()
    LIVE.clear()
    DOUBLE.clear()
    CANCELLED.clear()


async def test_calls_from_a_client_activate_each_grain_once_spread_over_silos() -> None:
    async with open_test_cluster(3, grains=[CounterGrain]) as cluster:
        refs = [cluster.get_grain(ICounter, f"g{i}") for i in range(300)]
        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(ref.add, 1)
        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(ref.add, 1)
        assert len(ACTIVATIONS) == 300
        assert set(ACTIVATIONS.values()) == {1}
        assert not DOUBLE
        hosts = Counter(LIVE.values())
        assert len(hosts) == 3  # random placement used every silo
        entries = [await cluster.lookup_activation(ref.grain_id) for ref in refs]
        assert all(e is not None and e.silo_id == LIVE[str(e.grain_id)] for e in entries)
        assert await refs[7].add(0) == 2


async def test_fifty_concurrent_first_calls_from_three_silos_make_one_activation() -> None:
    async with open_test_cluster(3, grains=[CounterGrain]) as cluster:
        results: list[int] = []

        async def call(silo_index: int) -> None:
            ref = cluster.silos[silo_index].get_grain(ICounter, "contended")
            results.append(await ref.add(1))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(call, i % 3)
        assert Counter({"counter/contended": 1}) == ACTIVATIONS
        assert sorted(results) == list(range(1, 51))


async def test_results_exceptions_and_references_cross_silos() -> None:
    async with open_test_cluster(2, grains=[CounterGrain, EchoGrain]) as cluster:
        echo = cluster.get_grain(EchoGrain, "e")
        assert await echo.echo({"a": [1, 2]}) == {"a": [1, 2]}
        with pytest.raises(Boom, match="on purpose"):
            await echo.fail()
        counter = cluster.get_grain(ICounter, "c")
        assert await echo.call_counter(counter, 5) == 5
        assert await counter.add(1) == 6


async def test_a_callers_deadline_travels_with_the_call(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_cluster(2, grains=[EchoGrain], client=True) as cluster:
        echo = cluster.get_grain(EchoGrain, "slow")
        with trio.move_on_after(1):
            await echo.slow(100)
        await trio.sleep(0.5)
        assert CANCELLED == ["echo/slow"]


async def test_a_grain_type_no_silo_hosts_is_a_clear_error() -> None:
    async with open_test_cluster(2, grains=[EchoGrain]) as cluster:
        with pytest.raises(SiloUnavailableError, match="no active silo hosts grain type 'counter'"):
            await cluster.get_grain(ICounter, "x").add(1)
        # and the silos keep serving
        assert await cluster.get_grain(EchoGrain, "e").echo({}) == {}


async def test_a_graceful_stop_moves_grains_and_keeps_their_state(tmp_path: Path) -> None:
    sqlite = ProviderConfig(provider="sqlite", options={"path": str(tmp_path / "s.db")})
    config = SiloConfig(storage={"default": sqlite})
    async with open_test_cluster(2, grains=[CounterGrain], config=config) as cluster:
        refs = [cluster.get_grain(ICounter, f"g{i}") for i in range(20)]
        for ref in refs:
            assert await ref.add(3) == 3
        leaving = cluster.silos[0]
        await cluster.stop_silo(leaving)
        await cluster.wait_for_active(1)
        for ref in refs:
            assert await ref.add(1) == 4
            assert await ref.where() == cluster.silos[0].silo_id
        assert not DOUBLE


async def test_a_killed_silo_is_declared_dead_and_its_grains_come_back_elsewhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_cluster(3, grains=[CounterGrain]) as cluster:
        refs = [cluster.get_grain(ICounter, f"g{i}") for i in range(60)]
        for ref in refs:
            await ref.add(1)
        victim = cluster.silos[1]
        on_victim = [ref for ref in refs if LIVE[str(ref.grain_id)] == victim.silo_id]
        assert on_victim
        await cluster.kill_silo(victim)
        for gid in [g for g, s in LIVE.items() if s == victim.silo_id]:
            del LIVE[gid]  # killed activations never deactivate
        start = trio.current_time()
        await cluster.wait_for_active(2)
        detected = trio.current_time() - start
        assert detected <= SiloConfig().dead_after + 2 * SiloConfig().heartbeat_interval
        for ref in on_victim:
            await ref.add(1)
            assert LIVE[str(ref.grain_id)] != victim.silo_id
        assert not DOUBLE


async def test_cancelling_a_caller_cancels_the_remote_turn(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_cluster(2, grains=[EchoGrain, CounterGrain]) as cluster:
        # an echo grain activated on the second silo, called from the first: remote turns
        caller, host = cluster.silos
        for i in range(100):
            remote = caller.get_grain(EchoGrain, f"k{i}")
            await remote.echo({})
            if caller.catalog.lookup(remote.grain_id) is None:
                break
        assert host.catalog.lookup(remote.grain_id) is not None
        from_client = cluster.get_grain(EchoGrain, "c1")
        with trio.CancelScope() as scope:  # no deadline: only the CANCEL message can do it
            async with trio.open_nursery() as nursery:
                nursery.start_soon(from_client.slow, 100)
                nursery.start_soon(remote.slow, 100)
                await trio.sleep(1)
                scope.cancel()
        await trio.sleep(0.5)
        assert sorted(CANCELLED) == sorted(["echo/c1", str(remote.grain_id)])
        assert cluster.client.statistics().pending_calls == 0
        assert caller.statistics().remote_calls_pending == 0


async def test_idempotent_calls_in_flight_to_a_dead_silo_are_sent_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_cluster(3, grains=[EchoGrain]) as cluster:
        for i in range(100):
            ref = cluster.get_grain(EchoGrain, f"i{i}")
            await ref.echo({})
            victim = next(s for s in cluster.silos if s.catalog.lookup(ref.grain_id) is not None)
            if victim is not cluster.silos[0]:
                break
        results: list[str] = []
        errors: list[BaseException] = []

        async def call(method: str) -> None:
            try:
                results.append(await getattr(ref, method)(3))
            except SiloUnavailableError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "settle")  # idempotent: sent again after the death
            nursery.start_soon(call, "slow")  # not: fails, may or may not have run
            await trio.sleep(1)
            await cluster.kill_silo(victim)
        assert results == ["settled"]
        assert len(errors) == 1
        assert "may or may not have run" in str(errors[0])
        survivor = next(s for s in cluster.silos if s.catalog.lookup(ref.grain_id) is not None)
        assert survivor is not victim


@placement(PreferLocalPlacement())
class LocalGrain(Grain):
    async def where(self) -> str:
        return self.runtime_identity

    async def leave(self) -> None:
        self.deactivate_on_idle()


async def test_a_stale_cache_entry_is_mended_by_a_not_here_answer(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_cluster(3, grains=[LocalGrain]) as cluster:
        a, b, c = cluster.silos
        assert await a.get_grain(LocalGrain, "g").where() == a.silo_id
        from_c = c.get_grain(LocalGrain, "g")
        assert await from_c.where() == a.silo_id  # c caches "g is on a"
        await a.get_grain(LocalGrain, "g").leave()
        await trio.sleep(1)  # deactivated on a
        assert await b.get_grain(LocalGrain, "g").where() == b.silo_id  # now on b
        assert await from_c.where() == b.silo_id  # a answered "not here"; c re-located
        assert c.cluster is not None
        cached = c.cluster.locator.directory.cache.peek(from_c.grain_id)
        assert cached is not None
        assert cached.silo_id == b.silo_id
        assert a.catalog.lookup(from_c.grain_id) is None


async def test_a_client_calls_by_name_with_plain_data() -> None:
    async with open_test_cluster(2, grains=[CounterGrain, EchoGrain]) as cluster:
        client = cluster.client
        assert await client.call("counter/x", "add", {"n": 2}) == 2
        assert await client.call("counter/x", "add", {"n": 3}) == 5
        assert await client.call("echo/e", "echo", {"value": {"a": [1, 2]}}) == {"a": [1, 2]}
        with pytest.raises(Boom):
            await client.call("echo/e", "fail")
        with pytest.raises(GrainMethodError, match="no grain method 'nope'"):
            await client.call("echo/e", "nope")


async def test_the_per_silo_memory_warning_names_reminders_only_when_a_grain_uses_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_test_cluster(1, grains=[EchoGrain]):
        pass
    assert "[reminders.default]" not in caplog.text  # no hosted grain has receive_reminder
    assert "[storage.default]" in caplog.text
