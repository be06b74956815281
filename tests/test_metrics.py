"""Silo metrics (``SiloConfig.metrics``): calls per grain type and method, errors, sampled
latency histograms, storage operations, membership changes; nothing when off."""

from __future__ import annotations

import attrs
import pytest
import trio

from trio_grains import (
    Grain,
    InconsistentStateError,
    LatencyHistogram,
    SiloConfig,
    open_silo,
    persistent_state,
)
from trio_grains._grain import class_info
from trio_grains._metrics import LATENCY_SAMPLE
from trio_grains.testing import open_test_cluster


@attrs.define
class Tally:
    n: int = 0


class MeterGrain(Grain):
    state = persistent_state(Tally)

    async def add(self, n: int) -> int:
        self.state.state.n += n
        return self.state.state.n

    async def save(self) -> None:
        await self.state.write()

    async def slow(self) -> None:
        await trio.sleep(0.01)

    async def fail(self) -> None:
        raise KeyError("no such thing")

    async def add_tally(self, tally: Tally) -> int:
        assert isinstance(tally, Tally), tally  # decoded by the method's own annotation
        self.state.state.n += tally.n
        return self.state.state.n


def metered(**changes: object) -> SiloConfig:
    return SiloConfig(metrics=True, **changes)  # type: ignore[arg-type]


async def test_metrics_are_off_by_default_and_the_method_table_is_the_class_own() -> None:
    async with open_silo(grains=[MeterGrain]) as silo:
        await silo.get_grain(MeterGrain, "a").add(1)
        assert silo.statistics().metrics is None
        act = silo.catalog.local_activation(
            silo.get_grain(MeterGrain, "a").grain_id, class_info(MeterGrain)
        )
        assert act is not None
        assert act.methods is class_info(MeterGrain).methods  # no wrapper on the call path


async def test_calls_and_errors_are_counted_per_type_and_method_on_every_path() -> None:
    async with open_silo(metered(), grains=[MeterGrain]) as silo:
        grain = silo.get_grain(MeterGrain, "a")
        for _ in range(20):
            await grain.add(1)  # idle grain: the turn runs in this task
        async with trio.open_nursery() as nursery:  # busy grain: queued, run by its worker
            nursery.start_soon(grain.slow)
            for _ in range(5):
                nursery.start_soon(grain.add, 1)
        for _ in range(3):
            with pytest.raises(KeyError):
                await grain.fail()
        metrics = silo.statistics().metrics
    assert metrics is not None
    add = metrics.method("meter", "add")
    assert add is not None
    assert (add.calls, add.errors) == (25, 0)
    assert add.latency.count == -(-25 // LATENCY_SAMPLE)  # every 16th call is timed
    fail = metrics.method("meter", "fail")
    assert fail is not None
    assert (fail.calls, fail.errors) == (3, 3)
    slow = metrics.method("meter", "slow")
    assert slow is not None
    assert slow.latency.count == 1
    assert 0.01 <= slow.latency.percentile(0.5) < 0.1  # within a factor of two, and slack
    assert metrics.method("meter", "save") is None  # never called: not listed


async def test_storage_operations_are_counted_and_timed() -> None:
    async with open_silo(metered(), grains=[MeterGrain]) as silo:
        grain = silo.get_grain(MeterGrain, "a")
        await grain.add(2)
        await grain.save()
        await grain.save()
        storage = silo.catalog.storages["default"][0]
        with pytest.raises(InconsistentStateError):
            await storage.write("state", grain.grain_id, b"x", None)  # a stale (no) etag
        metrics = silo.statistics().metrics
    assert metrics is not None
    by_op = {(s.storage, s.operation): s for s in metrics.storage}
    assert by_op["default", "read"].calls == 1  # loaded once, at activation
    write = by_op["default", "write"]
    assert (write.calls, write.errors) == (3, 1)
    assert write.latency.count == 3  # storage operations are all timed


async def test_remote_calls_are_counted_where_they_run_and_membership_changes_seen() -> None:
    async with open_test_cluster(2, grains=[MeterGrain], config=metered()) as cluster:
        client = cluster.client
        for key in range(10):
            await client.get_grain(MeterGrain, str(key)).add(1)
        # arguments of remote calls are decoded by the grain's annotations, not the
        # counting wrapper's (they arrived as dicts once)
        assert await client.get_grain(MeterGrain, "0").add_tally(Tally(5)) == 6
        stats = [silo.statistics().metrics for silo in cluster.silos]
    assert all(m is not None for m in stats)
    ran = [m.method("meter", "add") for m in stats if m is not None]
    assert sum(m.calls for m in ran if m is not None) == 10  # each once, on its silo
    assert all(m is not None and m.membership_changes >= 1 for m in stats)


def test_a_histogram_answers_percentiles_by_its_buckets() -> None:
    buckets = [0] * 48
    buckets[10] = 90  # 90 durations below 1024 ns
    buckets[20] = 10  # 10 below about 1 ms
    h = LatencyHistogram(count=100, sum_seconds=0.0105, buckets=tuple(buckets))
    assert h.percentile(0.5) == 1024 / 1e9
    assert h.percentile(0.9) == 1024 / 1e9
    assert h.percentile(0.95) == (1 << 20) / 1e9
    assert h.mean == pytest.approx(0.000105)
    assert LatencyHistogram(0, 0.0, tuple(buckets)).percentile(0.99) == 0.0
    with pytest.raises(ValueError, match="q must be"):
        h.percentile(0)
