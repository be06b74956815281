"""The ``otel-metrics`` service against real silos, collected with the SDK's
``InMemoryMetricReader``: what it reports matches ``silo.statistics()``, from the Trio
thread and from a reader's own thread, and nothing once the silo stopped."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric, NumberDataPoint
from trio_grains_otel import INSTRUMENTS
from trio_grains_otel._metrics import SiloSource

from trio_grains import (
    ConfigError,
    Grain,
    ProviderConfig,
    SequenceToken,
    SiloConfig,
    StreamStatistics,
    implicit_subscription,
    open_silo,
    persistent_state,
)

Point = tuple[dict[str, Any], float]


@attrs.define
class Otel:
    """An SDK meter provider with an in-memory reader, for one test."""

    reader: InMemoryMetricReader
    provider: MeterProvider

    def config(self, **options: Any) -> ProviderConfig:
        return ProviderConfig(
            provider="otel-metrics", options={"meter_provider": self.provider, **options}
        )

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is not None:
            for resource in data.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        found[metric.name] = metric
        return found

    def points(self) -> dict[str, list[Point]]:
        return {name: number_points(metric) for name, metric in self.metrics().items()}


def number_points(metric: Metric) -> list[Point]:
    """The (attributes, value) of *metric*'s points (sums and gauges only: no histogram)."""
    points = []
    for point in metric.data.data_points:
        assert isinstance(point, NumberDataPoint), metric
        points.append((dict(point.attributes or {}), point.value))
    return points


@pytest.fixture
def otel() -> Iterator[Otel]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Otel(reader, provider)
    provider.shutdown()


@attrs.define
class Tally:
    n: int = 0


class CounterGrain(Grain):
    state = persistent_state(Tally)

    async def add(self, n: int) -> int:
        self.state.state.n += n
        return self.state.state.n

    async def save(self) -> None:
        await self.state.write()

    async def fail(self) -> None:
        raise KeyError("no such thing")


class OtherGrain(Grain):
    async def ping(self) -> str:
        return "pong"


@implicit_subscription("orders")
class OrderGrain(Grain):
    async def on_stream_item(self, order: int, token: SequenceToken) -> None:
        if order < 0:
            raise ValueError(f"bad order {order}")


def silo_config(otel: Otel, name: str = "silo", **options: Any) -> SiloConfig:
    return SiloConfig(name=name, metrics=True, services={"otel": otel.config(**options)})


def value(points: list[Point], **attributes: Any) -> float:
    """The value of the one point whose attributes include *attributes*."""
    wanted = {k.replace("_", "."): v for k, v in attributes.items()}
    found = [v for attrs_, v in points if wanted.items() <= attrs_.items()]
    assert len(found) == 1, (wanted, points)
    return found[0]


async def exercise(silo: Any) -> None:
    grain = silo.get_grain(CounterGrain, "a")
    for _ in range(20):
        await grain.add(1)
    await grain.save()
    for _ in range(3):
        with pytest.raises(KeyError):
            await grain.fail()
    await silo.get_grain(CounterGrain, "b").add(5)
    for key in range(3):
        await silo.get_grain(OtherGrain, key).ping()


async def test_calls_and_errors_per_method_match_the_silo_statistics(otel: Otel) -> None:
    async with open_silo(silo_config(otel), grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        points = otel.points()
        stats = silo.statistics()
    assert stats.metrics is not None
    assert len(stats.metrics.methods) == 4
    for m in stats.metrics.methods:
        where = {"grain_type": m.grain_type, "grain_method": m.method}
        assert value(points["trio_grains.grain.calls"], **where) == m.calls
        assert value(points["trio_grains.grain.call.errors"], **where) == m.errors
        assert value(points["trio_grains.grain.call.duration.samples"], **where) == m.latency.count
    where = {"silo_id": stats.silo_id, "silo_name": "silo", "grain_type": "counter"}
    assert value(points["trio_grains.grain.calls"], **where, grain_method="add") == 21
    assert value(points["trio_grains.grain.call.errors"], **where, grain_method="fail") == 3


async def test_activations_by_grain_type_and_the_silo_figures(otel: Otel) -> None:
    async with open_silo(silo_config(otel), grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        points = otel.points()
        stats = silo.statistics()
    assert stats.activations_by_type == {"counter": 2, "other": 3}
    assert value(points["trio_grains.grain.activations"], grain_type="counter") == 2
    assert value(points["trio_grains.grain.activations"], grain_type="other") == 3
    assert value(points["trio_grains.grain.activations.created"]) == 5
    assert value(points["trio_grains.grain.calls.queued"]) == 0
    assert value(points["trio_grains.remote.calls.pending"]) == 0
    assert value(points["trio_grains.cluster.silos.active"]) == 1
    assert value(points["trio_grains.cluster.membership.changes"]) == 0


async def test_latency_percentiles_are_gauges_in_seconds_with_a_quantile(otel: Otel) -> None:
    async with open_silo(silo_config(otel), grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        metrics = otel.metrics()
        stats = silo.statistics()
    duration = metrics["trio_grains.grain.call.duration"]
    assert duration.unit == "s"
    assert type(duration.data).__name__ == "Gauge"
    assert metrics["trio_grains.grain.calls"].unit == "{call}"
    points = number_points(duration)
    assert stats.metrics is not None
    add = stats.metrics.method("counter", "add")
    assert add is not None
    for q in (0.5, 0.9, 0.99):
        got = value(points, grain_type="counter", grain_method="add", quantile=q)
        assert got == add.latency.percentile(q) > 0
    assert all(v > 0 for _, v in number_points(metrics["trio_grains.grain.call.duration.sum"]))


async def test_storage_operations_are_reported(otel: Otel) -> None:
    async with open_silo(silo_config(otel), grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        points = otel.points()
    where = {"storage_name": "default", "storage_operation": "write"}
    assert value(points["trio_grains.storage.operations"], **where) == 1
    assert value(points["trio_grains.storage.operation.errors"], **where) == 0
    assert value(points["trio_grains.storage.operation.duration"], **where, quantile=0.5) > 0
    reads = value(points["trio_grains.storage.operations"], storage_operation="read")
    assert reads == 2  # each activation read its state


async def test_custom_quantiles_and_meter_name(otel: Otel) -> None:
    config = silo_config(otel, quantiles=[0.75], meter_name="orders")
    async with open_silo(config, grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        data = otel.reader.get_metrics_data()
    assert data is not None
    (scope,) = data.resource_metrics[0].scope_metrics
    assert scope.scope.name == "orders"
    (duration,) = [m for m in scope.metrics if m.name == "trio_grains.grain.call.duration"]
    assert {a["quantile"] for a, _ in number_points(duration)} == {0.75}


async def test_without_silo_metrics_only_the_silo_figures_are_reported(otel: Otel) -> None:
    config = SiloConfig(services={"otel": otel.config()})
    async with open_silo(config, grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        points = otel.points()
    assert value(points["trio_grains.grain.activations"], grain_type="other") == 3
    assert "trio_grains.grain.calls" not in points
    assert "trio_grains.storage.operations" not in points


async def test_stream_counters_and_partition_lag(
    otel: Otel, autojump_clock: trio.abc.Clock
) -> None:
    streams = {"default": ProviderConfig(provider="memory", options={"max_deliveries": 2})}
    config = attrs.evolve(silo_config(otel), streams=streams)
    async with open_silo(config, grains=[OrderGrain]) as silo:
        provider = silo.get_stream_provider()
        for key in range(6):
            await provider.get_stream("orders", key).publish(key - 1)  # one bad order
        with trio.fail_after(60):
            while not done(provider.statistics()):  # noqa: ASYNC110 - polling statistics
                await trio.sleep(0.01)
        points = otel.points()
        stats = provider.statistics()
    assert stats.acked >= 6
    at = {"stream_provider": "default"}
    assert value(points["trio_grains.stream.items.acked"], **at) == stats.acked
    assert value(points["trio_grains.stream.items.delivered"], **at) == stats.delivered
    assert value(points["trio_grains.stream.items.failed"], **at) == stats.failed == 2
    assert value(points["trio_grains.stream.items.redelivered"], **at) == stats.redelivered
    assert value(points["trio_grains.stream.items.dead_lettered"], **at) == 1
    assert value(points["trio_grains.stream.items.in_flight"], **at) == stats.in_flight
    assert value(points["trio_grains.stream.partitions.owned"], **at) == stats.partitions
    lags = {a["stream.partition"]: v for a, v in points["trio_grains.stream.partition.lag"]}
    assert lags == {p: lag for p, lag in stats.lag.items() if lag is not None}
    assert lags  # the partitions that received items report their lag


def done(stats: StreamStatistics) -> bool:
    return stats.dead_lettered == 1 and stats.acked >= 6 and stats.in_flight == 0


async def test_nothing_is_reported_once_the_silo_stopped(otel: Otel) -> None:
    async with open_silo(silo_config(otel), grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        assert otel.points()
    assert otel.points() == {}
    assert await trio.to_thread.run_sync(otel.points) == {}


async def test_a_reader_thread_reads_the_silo_on_its_trio_thread(otel: Otel) -> None:
    async with open_silo(silo_config(otel), grains=[CounterGrain, OtherGrain]) as silo:
        await exercise(silo)
        points = await trio.to_thread.run_sync(otel.points)
        stats = silo.statistics()
    assert value(points["trio_grains.grain.calls"], grain_method="add") == 21
    assert value(points["trio_grains.grain.activations"], grain_type="other") == 3
    assert value(points["trio_grains.grain.activations.created"]) == stats.activations_created


async def test_silos_of_one_process_share_the_instruments(otel: Otel) -> None:
    async with (
        open_silo(silo_config(otel, name="a"), grains=[OtherGrain]) as a,
        open_silo(silo_config(otel, name="b"), grains=[OtherGrain]) as b,
    ):
        await a.get_grain(OtherGrain, 1).ping()
        for key in range(2):
            await b.get_grain(OtherGrain, key).ping()
        points = otel.points()["trio_grains.grain.activations"]
    assert value(points, silo_name="a") == 1
    assert value(points, silo_name="b") == 2
    # a silo started later, in the same process, is reported (instruments are not re-made)
    async with open_silo(silo_config(otel, name="c"), grains=[OtherGrain]) as c:
        await c.get_grain(OtherGrain, 1).ping()
        points = otel.points()["trio_grains.grain.activations"]
    assert points == [({"silo.id": "c", "silo.name": "c", "grain.type": "other"}, 1)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"meter": "x"}, r"unknown option 'meter'; the options are meter_name, meter_provider"),
        ({"meter_name": ""}, r"meter_name must be a non-empty string, got ''"),
        ({"meter_name": 3}, r"meter_name must be a non-empty string, got 3"),
        ({"meter_provider": "global"}, r"meter_provider must be an opentelemetry\.metrics"),
        ({"quantiles": [0.5, 1.5]}, r"quantiles must be a list of distinct numbers"),
        ({"quantiles": 0.5}, r"quantiles must be a list"),
        ({"quantiles": [0.5, 0.5]}, r"quantiles must be a list of distinct"),
    ],
)
async def test_bad_options_fail_the_silo_start_naming_the_key(
    options: dict[str, Any], message: str
) -> None:
    otel = ProviderConfig(provider="otel-metrics", options=options)
    config = SiloConfig(services={"metrics": otel})
    with pytest.raises(ConfigError, match=message) as info:
        async with open_silo(config):
            pass
    assert "invalid options for the otel-metrics service 'metrics'" in str(info.value)


def test_every_instrument_is_documented() -> None:
    page = (Path(__file__).parents[3] / "docs" / "otel.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(trio_grains\.[a-z_.]+)`", page))
    names = {spec.name for spec in INSTRUMENTS}
    assert names <= documented, sorted(names - documented)
    for spec in INSTRUMENTS:
        row = next(line for line in page.splitlines() if f"`{spec.name}`" in line)
        assert f"`{spec.unit}`" in row, spec.name


GLOBAL_PROVIDER_PROGRAM = '''
import tomllib

import trio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from trio_grains import Grain, SiloConfig, open_silo

TOML = """
name = "toml-silo"
metrics = true

[services.otel]
provider = "otel-metrics"
"""


class PingGrain(Grain):
    async def ping(self) -> str:
        return "pong"


async def main():
    config = SiloConfig.from_dict(tomllib.loads(TOML))
    async with open_silo(config, grains=[PingGrain]) as silo:
        # the SDK may be set up after the silo started: the API's proxy follows it
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        for _ in range(3):
            await silo.get_grain(PingGrain, 1).ping()
        data = reader.get_metrics_data()
    for scope in data.resource_metrics[0].scope_metrics:
        for metric in scope.metrics:
            if metric.name == "trio_grains.grain.calls":
                for point in metric.data.data_points:
                    print(scope.scope.name, dict(point.attributes), point.value)


trio.run(main)
'''


def test_the_toml_configuration_uses_the_global_meter_provider(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(GLOBAL_PROVIDER_PROGRAM, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    attributes = {
        "silo.id": "toml-silo",
        "silo.name": "toml-silo",
        "grain.type": "ping",
        "grain.method": "ping",
    }
    assert proc.stdout == f"trio_grains {attributes} 3\n"


async def test_a_silo_whose_trio_thread_is_blocked_is_left_out_once(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_silo(silo_config(otel), grains=[OtherGrain]) as silo:
        await silo.get_grain(OtherGrain, 1).ping()
        source = SiloSource(silo, (0.5,))
        results: list[object] = []

        def collect() -> None:
            results.append(source.figures(timeout=0.05))
            started = time.monotonic()
            results.append(source.figures(timeout=0.05))  # the miss is remembered
            results.append(time.monotonic() - started < 0.04)

        thread = threading.Thread(target=collect)
        thread.start()
        time.sleep(0.3)  # noqa: ASYNC251 - the silo's Trio thread is busy: it cannot answer
        thread.join()
    assert results == [None, None, True]
    assert "did not answer an OpenTelemetry collection" in caplog.text
