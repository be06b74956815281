"""The metric reference: every instrument the ``otel-metrics`` service creates.

Each :class:`InstrumentSpec` in :data:`INSTRUMENTS` names an instrument, its kind, unit and
attributes, and reads its points from one silo's :class:`Figures` (``silo.statistics()``,
its ``metrics`` and every stream provider's ``statistics()``): a frozen snapshot, so a
reader runs on any thread. ``docs/otel.md`` documents the same table, and a test checks
that it names every instrument.

Percentiles are gauges with a ``quantile`` attribute: the OpenTelemetry API has no
asynchronous histogram, and the silo keeps power-of-two histograms of its own
(:class:`~trio_grains.LatencyHistogram`), so the service reports the percentiles those
give, plus the ``.sum`` and ``.samples`` counters from which a backend derives the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal, TypeAlias

import attrs

from trio_grains import (
    LatencyHistogram,
    MethodStatistics,
    SiloStatistics,
    StorageStatistics,
    StreamStatistics,
)

__all__ = ["DEFAULT_QUANTILES", "INSTRUMENTS", "Figures", "InstrumentSpec"]

DEFAULT_QUANTILES = (0.5, 0.9, 0.99)

Attributes: TypeAlias = dict[str, str | int | float]
Point: TypeAlias = tuple[int | float, Attributes]
Kind: TypeAlias = Literal["counter", "up_down_counter", "gauge"]
Reader: TypeAlias = Callable[["Figures"], Iterable[Point]]


@attrs.frozen
class Figures:
    """One silo's figures at one moment, read on its Trio thread."""

    silo: SiloStatistics
    #: every grain type the silo hosted since the service started (0 when none is active)
    activations_by_type: Mapping[str, int]
    streams: tuple[StreamStatistics, ...]
    quantiles: tuple[float, ...]

    @property
    def attributes(self) -> Attributes:
        """The attributes of every point: the silo it comes from."""
        return {"silo.id": self.silo.silo_id, "silo.name": self.silo.name}


@attrs.frozen
class InstrumentSpec:
    """One observable instrument and how to read its points from a silo's figures."""

    name: str
    kind: Kind  #: ``counter``, ``up_down_counter`` or ``gauge`` (all observable)
    unit: str
    description: str
    #: the attributes of its points besides ``silo.id`` and ``silo.name``
    attributes: tuple[str, ...]
    read: Reader = attrs.field(repr=False, eq=False)


# --- readers -------------------------------------------------------------------------------


def _silo(get: Callable[[SiloStatistics], int]) -> Reader:
    def read(f: Figures) -> Iterator[Point]:
        yield get(f.silo), f.attributes

    return read


def _activations(f: Figures) -> Iterator[Point]:
    for grain_type, count in sorted(f.activations_by_type.items()):
        yield count, {**f.attributes, "grain.type": grain_type}


def _membership_changes(f: Figures) -> Iterator[Point]:
    if f.silo.metrics is not None:
        yield f.silo.metrics.membership_changes, f.attributes


def _quantiles(f: Figures, latency: LatencyHistogram, attributes: Attributes) -> Iterator[Point]:
    if latency.count:
        for q in f.quantiles:
            yield latency.percentile(q), {**attributes, "quantile": q}


def _method_points(f: Figures) -> Iterator[tuple[MethodStatistics, Attributes]]:
    if f.silo.metrics is not None:
        for m in f.silo.metrics.methods:
            yield m, {**f.attributes, "grain.type": m.grain_type, "grain.method": m.method}


def _method(get: Callable[[MethodStatistics], int | float]) -> Reader:
    def read(f: Figures) -> Iterator[Point]:
        for m, attributes in _method_points(f):
            yield get(m), attributes

    return read


def _method_quantiles(f: Figures) -> Iterator[Point]:
    for m, attributes in _method_points(f):
        yield from _quantiles(f, m.latency, attributes)


def _storage_points(f: Figures) -> Iterator[tuple[StorageStatistics, Attributes]]:
    if f.silo.metrics is not None:
        for s in f.silo.metrics.storage:
            attributes = {**f.attributes, "storage.name": s.storage}
            yield s, {**attributes, "storage.operation": s.operation}


def _storage(get: Callable[[StorageStatistics], int | float]) -> Reader:
    def read(f: Figures) -> Iterator[Point]:
        for s, attributes in _storage_points(f):
            yield get(s), attributes

    return read


def _storage_quantiles(f: Figures) -> Iterator[Point]:
    for s, attributes in _storage_points(f):
        yield from _quantiles(f, s.latency, attributes)


def _stream(get: Callable[[StreamStatistics], int]) -> Reader:
    def read(f: Figures) -> Iterator[Point]:
        for s in f.streams:
            yield get(s), {**f.attributes, "stream.provider": s.provider}

    return read


def _stream_lag(f: Figures) -> Iterator[Point]:
    for s in f.streams:
        for partition, lag in sorted(s.lag.items()):
            if lag is not None:
                attributes = {**f.attributes, "stream.provider": s.provider}
                yield lag, {**attributes, "stream.partition": partition}


# --- the table -----------------------------------------------------------------------------

_M = ("grain.type", "grain.method")
_S = ("storage.name", "storage.operation")
_P = ("stream.provider",)
_Q = ("quantile",)

_ = InstrumentSpec
INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    # the silo: always
    _("trio_grains.grain.activations", "up_down_counter", "{activation}",
      "Grain activations in the silo", ("grain.type",), _activations),
    _("trio_grains.grain.activations.created", "counter", "{activation}",
      "Grain activations the silo created", (), _silo(lambda s: s.activations_created)),
    _("trio_grains.grain.calls.queued", "up_down_counter", "{call}",
      "Calls waiting in activations' queues for their turn", (),
      _silo(lambda s: s.queued_calls)),
    _("trio_grains.grain.calls.waiting", "up_down_counter", "{call}",
      "Callers in the silo waiting for a reply", (), _silo(lambda s: s.waiting_callers)),
    _("trio_grains.remote.calls.pending", "up_down_counter", "{call}",
      "Calls sent to other silos and not answered yet", (),
      _silo(lambda s: s.remote_calls_pending)),
    _("trio_grains.remote.calls.forwarded", "counter", "{call}",
      "Calls forwarded or re-sent because the grain was on another silo", (),
      _silo(lambda s: s.calls_forwarded)),
    _("trio_grains.cluster.silos.active", "up_down_counter", "{silo}",
      "Active silos in the cluster as this silo sees it (1 when it runs alone)", (),
      _silo(lambda s: s.active_silos)),
    # with SiloConfig.metrics on
    _("trio_grains.grain.calls", "counter", "{call}",
      "Grain method calls the silo ran (turns), whoever called", _M,
      _method(lambda m: m.calls)),
    _("trio_grains.grain.call.errors", "counter", "{call}",
      "Grain method calls that raised an exception (cancellations are not errors)", _M,
      _method(lambda m: m.errors)),
    _("trio_grains.grain.call.duration", "gauge", "s",
      "Grain call duration percentiles, of the timed calls (upper bound of a power-of-two "
      "bucket)", _M + _Q, _method_quantiles),
    _("trio_grains.grain.call.duration.sum", "counter", "s",
      "Total duration of the timed grain calls", _M, _method(lambda m: m.latency.sum_seconds)),
    _("trio_grains.grain.call.duration.samples", "counter", "{call}",
      "Grain calls timed (one in trio_grains.LATENCY_SAMPLE)", _M,
      _method(lambda m: m.latency.count)),
    _("trio_grains.storage.operations", "counter", "{operation}",
      "Storage provider operations", _S, _storage(lambda s: s.calls)),
    _("trio_grains.storage.operation.errors", "counter", "{operation}",
      "Storage provider operations that failed (ETag conflicts included)", _S,
      _storage(lambda s: s.errors)),
    _("trio_grains.storage.operation.duration", "gauge", "s",
      "Storage operation duration percentiles (upper bound of a power-of-two bucket)",
      _S + _Q, _storage_quantiles),
    _("trio_grains.storage.operation.duration.sum", "counter", "s",
      "Total duration of the storage operations", _S,
      _storage(lambda s: s.latency.sum_seconds)),
    _("trio_grains.storage.operation.duration.samples", "counter", "{operation}",
      "Storage operations timed (every one)", _S, _storage(lambda s: s.latency.count)),
    _("trio_grains.cluster.membership.changes", "counter", "{change}",
      "Membership views the silo adopted (joins, leaves, deaths it saw)", (),
      _membership_changes),
    # every configured stream provider
    _("trio_grains.stream.items.delivered", "counter", "{item}",
      "Stream handler calls that returned", _P, _stream(lambda s: s.delivered)),
    _("trio_grains.stream.items.failed", "counter", "{item}",
      "Stream handler calls that raised", _P, _stream(lambda s: s.failed)),
    _("trio_grains.stream.items.acked", "counter", "{item}",
      "Stream items done (acknowledged)", _P, _stream(lambda s: s.acked)),
    _("trio_grains.stream.items.redelivered", "counter", "{item}",
      "Stream item retries and adapter redeliveries", _P, _stream(lambda s: s.redelivered)),
    _("trio_grains.stream.items.dead_lettered", "counter", "{item}",
      "Stream items sent to the dead-letter path", _P, _stream(lambda s: s.dead_lettered)),
    _("trio_grains.stream.items.in_flight", "up_down_counter", "{item}",
      "Stream items received and not yet acked or terminated", _P,
      _stream(lambda s: s.in_flight)),
    _("trio_grains.stream.subscriptions", "up_down_counter", "{subscription}",
      "Explicit stream subscriptions in the silo", _P, _stream(lambda s: s.subscriptions)),
    _("trio_grains.stream.partitions.owned", "up_down_counter", "{partition}",
      "Stream partitions this silo pulls", _P, _stream(lambda s: len(s.owned_partitions))),
    _("trio_grains.stream.partition.lag", "gauge", "{item}",
      "Items waiting in a partition behind the last one received (when the adapter "
      "reports it)", (*_P, "stream.partition"), _stream_lag),
)  # fmt: skip
del _
