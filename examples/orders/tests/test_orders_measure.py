"""The demo's measurements without a cluster: the pacing on Trio's mock clock, the CPU
readings (and their absence without ``/proc``), the summary's shape, ``--rate``."""

from __future__ import annotations

import datetime
import itertools
import os
import re
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_grains_orders import _measure
from trio_grains_orders._measure import (
    CpuMeter,
    CpuPerOrder,
    CpuSample,
    Pacer,
    cpu_seconds,
    find_child,
    summarize,
)
from trio_grains_orders.demo import Options, parse_args

T0 = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


async def _bursts(pacer: Pacer, work: float = 0.0) -> list[tuple[float, range]]:
    """Every burst with the (mock) time it was handed out; *work* seconds after each."""
    out = []
    while burst := await pacer.next_burst():
        out.append((trio.current_time(), burst))
        await trio.sleep(work)
    return out


async def test_pacer_hands_out_each_order_once_in_order_never_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(count=1000, rate=500.0, start=trio.current_time(), tick=0.01)
    bursts = await _bursts(pacer)
    handed = [i for _, burst in bursts for i in burst]
    assert handed == list(range(1000))
    for at, burst in bursts:
        assert all(pacer.due(i) <= at for i in burst)  # never before it is due
        assert pacer.due_by(at) == burst[-1] + 1  # everything due by then, nothing more
    times = [at for at, _ in bursts]
    assert all(b - a >= pacer.tick - 1e-9 for a, b in itertools.pairwise(times))
    # 500/s in 10 ms ticks: five a burst (a tick's float rounding moves one either way)
    assert {len(burst) for _, burst in bursts[1:]} <= {4, 5, 6}
    # on schedule to the end (2 s, mock time): the last one within a tick of its due time
    assert pacer.due(999) <= times[-1] <= pacer.due(999) + pacer.tick + 1e-9


async def test_a_slow_consumer_gets_bigger_bursts_and_the_schedule_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(count=300, rate=100.0, start=trio.current_time(), tick=0.01)
    bursts = await _bursts(pacer, work=0.1)  # each burst takes the consumer 100 ms
    assert [i for _, burst in bursts for i in burst] == list(range(300))
    assert max(len(burst) for _, burst in bursts) >= 10  # caught up: ten due per 100 ms
    # the last order is handed out by its due time plus one consumer delay: no drift
    assert bursts[-1][0] <= pacer.due(299) + 0.1 + 1e-9


async def test_pacer_wakes_for_each_order_at_low_rates_and_rejects_bad_rates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    bursts = await _bursts(Pacer(count=4, rate=2.0, start=start))
    assert [(at - start, list(b)) for at, b in bursts] == [
        (0.0, [0]),
        (0.5, [1]),
        (1.0, [2]),
        (1.5, [3]),
    ]
    assert await Pacer(count=0, rate=1.0, start=start).next_burst() == range(0)
    for rate in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            Pacer(count=1, rate=rate, start=start)


def test_cpu_seconds_of_this_process_and_of_none() -> None:
    if not Path("/proc/self/stat").exists():
        assert cpu_seconds(os.getpid()) is None
        return
    seconds = cpu_seconds(os.getpid())
    assert seconds is not None
    assert seconds >= 0
    assert cpu_seconds(2**22 + 1) is None  # above Linux's pid_max: no such process


def test_without_proc_the_other_processes_are_not_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_measure, "PROC", tmp_path / "no-proc")
    assert cpu_seconds(os.getpid()) is None
    assert find_child("nats-server") is None
    sample = CpuMeter([os.getpid()], server_pid=os.getpid()).sample()
    assert sample.silos is None
    assert sample.server is None
    assert sample.client > 0  # this process: time.process_time(), everywhere
    cpu = CpuPerOrder.between(sample, CpuSample(None, sample.client + 0.5, None), 1000)
    assert cpu.total is None
    assert cpu.text() == "client 500 us (silos and nats-server not measured: no /proc here)"


def test_a_killed_silo_counts_up_to_its_last_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    readings: dict[int, float | None] = {1: 2.0, 2: 3.0}
    monkeypatch.setattr(_measure, "cpu_seconds", readings.get)
    meter = CpuMeter([1, 2], server_pid=None)
    assert meter.sample().silos == 5.0
    readings.update({1: 2.5, 2: None})  # silo 2 was killed and reaped
    assert meter.sample().silos == 5.5


def _summary(rate: float | None, latency_s: float, processed: int = 100) -> _measure.PhaseSummary:
    published = {f"o{i}": T0 + datetime.timedelta(seconds=i / 100) for i in range(100)}
    done: dict[str, datetime.datetime | None] = {
        k: at + datetime.timedelta(seconds=latency_s) for k, at in list(published.items())
    }
    for k in list(done)[processed:]:
        done[k] = None
    before = CpuSample(silos=1.0, client=1.0, server=1.0)
    after = CpuSample(silos=1.1, client=1.02, server=1.03)
    return summarize("paced", rate, published, done, CpuPerOrder.between(before, after, 100))


def test_the_summary_has_throughput_latency_percentiles_and_cpu_per_order() -> None:
    summary = _summary(rate=100.0, latency_s=0.02)
    assert (summary.orders, summary.processed) == (100, 100)
    assert summary.throughput > 0
    assert summary.sustained > 0
    assert summary.seconds > 0
    assert list(summary.latency_ms) == ["p50", "p90", "p99", "max"]
    assert all(v >= 0 for v in summary.latency_ms.values())
    assert summary.cpu.total is not None
    assert not summary.saturated
    head, latency, cpu = summary.lines()
    assert re.fullmatch(r"paced: 100/100 orders processed in [\d.]+ s: [\d,]+ orders/s", head)
    assert re.fullmatch(
        r"latency, publish to processed: p50 [\d,]+ ms, p90 [\d,]+ ms, p99 [\d,]+ ms, "
        r"max [\d,]+ ms",
        latency,
    )
    assert re.fullmatch(
        r"cpu per order: [\d,]+ us \(silos [\d,]+, client [\d,]+, nats-server [\d,]+\)", cpu
    )


def test_an_unpaced_or_overrun_phase_says_it_measured_a_backlog() -> None:
    unpaced = _summary(rate=None, latency_s=1.0)
    assert unpaced.saturated
    assert re.search(r"orders/s, [\d,]+/s sustained \(the last 90 %\)$", unpaced.lines()[0])
    assert unpaced.lines()[1].endswith("(saturated: mostly time waiting in the backlog)")
    overrun = _summary(rate=10_000.0, latency_s=1.0)  # published 100/s, asked 10,000/s
    assert overrun.saturated
    assert "below the 10,000 asked: the cluster did not keep up" in overrun.lines()[0]


def test_a_phase_with_nothing_processed_has_no_latency() -> None:
    summary = _summary(rate=100.0, latency_s=0.02, processed=0)
    assert summary.processed == 0
    assert summary.throughput == 0.0
    assert summary.latency_ms == {}
    assert [line.split(":")[0] for line in summary.lines()] == ["paced", "cpu per order"]


def test_rate_on_the_command_line() -> None:
    assert parse_args([]).rate == "auto"
    assert parse_args(["--rate", "max"]).rate is None
    assert parse_args(["--rate", "250"]).rate == 250.0
    assert Options().rate is None  # Run.publish_all's default: unpaced, as benchmarked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "fast"], "'fast' is not a number of orders per second, auto or max"),
        (["--rate", "0"], "the rate must be positive"),
        (["--rate", "inf"], "the rate must be positive"),
        (["--orders", "1"], "--rate auto needs --orders 2 or more"),
    ],
)
def test_bad_rates_are_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
