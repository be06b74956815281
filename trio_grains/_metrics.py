"""Silo metrics: grain calls per type and method, storage latency, membership changes.

Off by default (``SiloConfig.metrics``): then nothing here runs and the call path is the
plain one. On, a silo gives its activations *instrumented* method tables: each grain
method's function is wrapped once per silo (not per call) by :func:`instrument`, which
counts the call, counts it as an error if it raises, and times every
``LATENCY_SAMPLE``-th call into a histogram. Storage providers are wrapped the same way
(:class:`TimedStorage`). :meth:`SiloMetrics.snapshot` turns the counters into frozen
:class:`MetricsSnapshot` objects for ``silo.statistics().metrics``, which exporters
(OpenTelemetry, Prometheus) and tests read.

Histograms have power-of-two buckets in nanoseconds (bucket ``i`` holds durations below
``2**i`` ns): recording is one ``int.bit_length()``; percentiles are exact to a factor
of two, which is what a latency dashboard needs.

May import: layers 0-3 (values up to grains, calls, storage and serialization) and tracing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from ._ids import GrainId
from ._methods import MethodInfo
from ._storage import GrainStorage, StoredState

__all__ = [
    "LATENCY_SAMPLE",
    "LatencyHistogram",
    "MethodStatistics",
    "MetricsSnapshot",
    "SiloMetrics",
    "StorageStatistics",
    "TimedStorage",
]

LATENCY_SAMPLE = 16
"""Every this-many-th call of a method is timed (all are counted): a timing costs two
clock reads, which the in-process call path (about a microsecond) would feel."""

_BUCKETS = 48  # 2**47 ns is about 39 hours


@attrs.frozen
class LatencyHistogram:
    """Durations in power-of-two buckets: ``buckets[i]`` counts those below ``2**i`` ns
    (and at least ``2**(i-1)``)."""

    count: int
    sum_seconds: float
    buckets: tuple[int, ...]

    def percentile(self, q: float) -> float:
        """The *q*-quantile (0 < q <= 1) in seconds: the upper bound of its bucket (so
        at most twice the true value); 0.0 when nothing was recorded."""
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q}")
        if self.count == 0:
            return 0.0
        rank, seen = q * self.count, 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return (1 << i) / 1e9
        return (1 << (len(self.buckets) - 1)) / 1e9

    @property
    def mean(self) -> float:
        return self.sum_seconds / self.count if self.count else 0.0


class _Histogram:
    __slots__ = ("buckets", "count", "sum_ns")

    def __init__(self) -> None:
        self.buckets = [0] * _BUCKETS
        self.count = 0
        self.sum_ns = 0

    def record(self, ns: int) -> None:
        self.buckets[min(ns.bit_length(), _BUCKETS - 1)] += 1
        self.count += 1
        self.sum_ns += ns

    def snapshot(self) -> LatencyHistogram:
        return LatencyHistogram(self.count, self.sum_ns / 1e9, tuple(self.buckets))


@attrs.frozen
class MethodStatistics:
    """Calls of one grain method on one silo (turns it ran, whoever called)."""

    grain_type: str
    method: str
    calls: int
    errors: int  #: calls that raised an exception (cancellations are not errors)
    latency: LatencyHistogram  #: turn durations, of every ``LATENCY_SAMPLE``-th call


@attrs.frozen
class StorageStatistics:
    """Operations of one configured storage provider (``storage.<name>``) on one silo."""

    storage: str
    operation: str  #: "read", "write" or "clear"
    calls: int
    errors: int
    latency: LatencyHistogram


@attrs.frozen
class MetricsSnapshot:
    """What ``silo.statistics().metrics`` holds when ``SiloConfig.metrics`` is on."""

    methods: tuple[MethodStatistics, ...]
    storage: tuple[StorageStatistics, ...]
    membership_changes: int  #: membership views adopted (joins, leaves, deaths seen)

    def method(self, grain_type: str, method: str) -> MethodStatistics | None:
        for m in self.methods:
            if m.grain_type == grain_type and m.method == method:
                return m
        return None


class _Operations:
    """Operations of one kind (a storage provider's writes, ...), every one timed."""

    __slots__ = ("calls", "errors", "latency")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.latency = _Histogram()


class _Counter:
    """Calls of one method. The call path only decrements ``left``: when it reaches zero
    the call is timed and a new lap of ``LATENCY_SAMPLE`` calls starts (the first call
    is timed); the call count is derived from the laps."""

    __slots__ = ("errors", "laps", "latency", "left")

    def __init__(self) -> None:
        self.left = 1
        self.laps = 0
        self.errors = 0
        self.latency = _Histogram()

    def new_lap(self) -> None:
        self.left = LATENCY_SAMPLE
        self.laps += 1

    @property
    def calls(self) -> int:
        if self.laps == 0:
            return 0
        return (self.laps - 1) * LATENCY_SAMPLE + (LATENCY_SAMPLE - self.left) + 1


def instrument(func: Callable[..., Awaitable[Any]], counter: _Counter) -> Callable[..., Any]:
    """*func* (a grain method) counting its calls and errors into *counter*, and timing
    every ``LATENCY_SAMPLE``-th one."""
    clock = time.perf_counter_ns

    @functools.wraps(func)  # the grain's name, annotations and signature (the codec's)
    async def counted(grain: Any, *args: Any, **kwargs: Any) -> Any:
        counter.left -= 1
        timed = not counter.left
        if timed:
            counter.new_lap()
        start = clock() if timed else 0
        try:
            return await func(grain, *args, **kwargs)
        except Exception:
            counter.errors += 1
            raise
        finally:
            if timed:
                counter.latency.record(clock() - start)

    return counted


async def timed_call(
    counter: _Counter,
    func: Callable[..., Awaitable[Any]],
    grain: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Await ``func(grain, *args, **kwargs)``, recording its duration in *counter*."""
    start = time.perf_counter_ns()
    try:
        return await func(grain, *args, **kwargs)
    finally:
        counter.latency.record(time.perf_counter_ns() - start)


class SiloMetrics:
    """The counters of one silo (see the module docstring)."""

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str], _Counter] = {}
        self._storage: dict[tuple[str, str], _Operations] = {}
        self.membership_changes = 0

    def instrument_methods(
        self, grain_type: str, methods: Mapping[str, MethodInfo]
    ) -> dict[str, MethodInfo]:
        """*methods* (of *grain_type*) counting their calls: ``func`` wrapped, and a
        ``counter`` for the in-task fast path, which counts inline around ``inline``."""
        table = {}
        for name, method in methods.items():
            counter = self._methods.setdefault((grain_type, name), _Counter())
            table[name] = attrs.evolve(
                method, func=instrument(method.func, counter), counter=counter
            )
        return table

    def storage_counter(self, storage: str, operation: str) -> _Operations:
        return self._storage.setdefault((storage, operation), _Operations())

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            methods=tuple(
                MethodStatistics(t, m, c.calls, c.errors, c.latency.snapshot())
                for (t, m), c in sorted(self._methods.items())
                if c.calls
            ),
            storage=tuple(
                StorageStatistics(s, op, c.calls, c.errors, c.latency.snapshot())
                for (s, op), c in sorted(self._storage.items())
                if c.calls
            ),
            membership_changes=self.membership_changes,
        )


class TimedStorage(GrainStorage):
    """A storage provider whose every operation is counted and timed into *metrics*."""

    def __init__(self, inner: GrainStorage, name: str, metrics: SiloMetrics) -> None:
        self.inner = inner
        self._counters: Mapping[str, _Operations] = {
            op: metrics.storage_counter(name, op) for op in ("read", "write", "clear")
        }

    async def _timed(self, operation: str, call: Awaitable[Any]) -> Any:
        counter = self._counters[operation]
        counter.calls += 1
        start = time.perf_counter_ns()
        try:
            return await call
        except Exception:
            counter.errors += 1
            raise
        finally:
            counter.latency.record(time.perf_counter_ns() - start)

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        result: StoredState | None = await self._timed(
            "read", self.inner.read(state_name, grain_id)
        )
        return result

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        etag_out: str = await self._timed(
            "write", self.inner.write(state_name, grain_id, data, etag)
        )
        return etag_out

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        await self._timed("clear", self.inner.clear(state_name, grain_id, etag))
