"""The Prometheus text exposition (format 0.0.4) of a silo's figures.

:func:`render_prometheus` is a pure function of snapshots (``silo.statistics()`` and each
stream provider's ``statistics()``): no I/O, no clock, easy to test and to reuse in an
exporter of your own. Every metric is named ``trio_grains_...``, counters end in
``_total``, durations are in seconds (``_seconds``), and every sample carries the label
``silo`` (the silo's configured name: stable across restarts, unlike its cluster id).

Latency histograms come from the silo's power-of-two buckets in nanoseconds
(``buckets[i]`` counts durations below ``2**i`` ns): they are exposed as cumulative
``le`` buckets at the fixed bounds :data:`BUCKET_BOUNDS_SECONDS` (``2**10`` ns, about a
microsecond, to ``2**35`` ns, about 34 s, then ``+Inf``), so every series always has the
same buckets and ``histogram_quantile()`` works across scrapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import attrs

from trio_grains import LatencyHistogram, SiloStatistics, StreamStatistics

__all__ = [
    "BUCKET_BOUNDS_SECONDS",
    "CONTENT_TYPE",
    "escape_help",
    "escape_label_value",
    "render_prometheus",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of the text exposition format 0.0.4."""

_FIRST_BOUND, _LAST_BOUND = 10, 35  # powers of two, in nanoseconds

BUCKET_BOUNDS_SECONDS: tuple[float, ...] = tuple(
    (1 << i) / 1e9 for i in range(_FIRST_BOUND, _LAST_BOUND + 1)
)
"""The finite ``le`` bounds of every latency histogram, in seconds (``+Inf`` follows)."""


def escape_label_value(value: str) -> str:
    """A label value as it goes between double quotes: ``\\``, ``"`` and newlines escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A ``# HELP`` docstring: ``\\`` and newlines escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


@attrs.define
class _Family:
    """One metric family: ``# HELP``, ``# TYPE``, then its samples."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    lines: list[str] = attrs.Factory(list)

    def add(self, labels: Mapping[str, str], value: float, suffix: str = "") -> None:
        self.lines.append(f"{self.name}{suffix}{_labels(labels)} {_value(value)}")

    def add_histogram(self, labels: Mapping[str, str], histogram: LatencyHistogram) -> None:
        raw = histogram.buckets
        seen = 0
        index = 0
        for i, bound in zip(
            range(_FIRST_BOUND, _LAST_BOUND + 1), BUCKET_BOUNDS_SECONDS, strict=True
        ):
            while index <= i and index < len(raw):
                seen += raw[index]
                index += 1
            self.add({**labels, "le": repr(bound)}, seen, "_bucket")
        self.add({**labels, "le": "+Inf"}, histogram.count, "_bucket")
        self.add(labels, float(histogram.sum_seconds), "_sum")
        self.add(labels, histogram.count, "_count")

    def render(self) -> Iterable[str]:
        if not self.lines:
            return
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self.lines


def render_prometheus(
    stats: SiloStatistics, streams: Sequence[StreamStatistics] = (), *, silo: str | None = None
) -> str:
    """The text exposition of one silo's figures.

    *stats* is ``silo.statistics()`` (its ``metrics`` adds per-method, per-storage and
    membership figures when ``SiloConfig.metrics`` is on), *streams* the ``statistics()``
    of each configured stream provider, and *silo* the ``silo`` label (default:
    ``stats.name``). Families without samples are left out. The result ends with a
    newline.
    """
    s = {"silo": stats.name if silo is None else silo}
    families: list[_Family] = []

    def family(name: str, kind: str, help: str) -> _Family:
        f = _Family("trio_grains_" + name, kind, help)
        families.append(f)
        return f

    family("activations", "gauge", "Grain activations in memory on this silo.").add(
        s, stats.activations
    )
    by_type = family("grain_activations", "gauge", "Grain activations in memory, per grain type.")
    for grain_type, count in sorted(stats.activations_by_type.items()):
        by_type.add({**s, "grain_type": grain_type}, count)
    family(
        "activations_created_total", "counter", "Grain activations created since the silo started."
    ).add(s, stats.activations_created)
    family("queued_calls", "gauge", "Calls queued behind a running turn.").add(
        s, stats.queued_calls
    )
    family("waiting_callers", "gauge", "Callers waiting for a grain call's result.").add(
        s, stats.waiting_callers
    )
    family("remote_calls_pending", "gauge", "Calls sent to other silos and not answered yet.").add(
        s, stats.remote_calls_pending
    )
    family(
        "calls_forwarded_total",
        "counter",
        "Calls forwarded or re-sent because the grain was on another silo.",
    ).add(s, stats.calls_forwarded)
    family("active_silos", "gauge", "Active silos in the cluster, as this silo sees it.").add(
        s, stats.active_silos
    )

    metrics = stats.metrics
    if metrics is not None:
        calls = family("grain_calls_total", "counter", "Grain method turns run on this silo.")
        errors = family(
            "grain_call_errors_total", "counter", "Grain method turns that raised an exception."
        )
        latency = family(
            "grain_call_duration_seconds",
            "histogram",
            "Grain method turn durations (one call in LATENCY_SAMPLE is timed).",
        )
        for m in sorted(metrics.methods, key=lambda m: (m.grain_type, m.method)):
            labels = {**s, "grain_type": m.grain_type, "method": m.method}
            calls.add(labels, m.calls)
            errors.add(labels, m.errors)
            latency.add_histogram(labels, m.latency)
        ops = family("storage_operations_total", "counter", "Grain storage operations.")
        op_errors = family(
            "storage_errors_total",
            "counter",
            "Grain storage operations that failed (ETag conflicts included).",
        )
        op_latency = family(
            "storage_operation_duration_seconds", "histogram", "Grain storage operation durations."
        )
        for st in sorted(metrics.storage, key=lambda st: (st.storage, st.operation)):
            labels = {**s, "storage": st.storage, "operation": st.operation}
            ops.add(labels, st.calls)
            op_errors.add(labels, st.errors)
            op_latency.add_histogram(labels, st.latency)
        family(
            "membership_changes_total", "counter", "Cluster membership views this silo adopted."
        ).add(s, metrics.membership_changes)

    counters = [
        ("delivered", "Stream items whose handler returned."),
        ("failed", "Stream handler calls that raised."),
        ("acked", "Stream items acknowledged (done)."),
        ("redelivered", "Stream items delivered again (retries and adapter redeliveries)."),
        ("dead_lettered", "Stream items sent to the dead-letter path."),
    ]
    stream_families = [
        (field, family(f"stream_items_{field}_total", "counter", text)) for field, text in counters
    ]
    in_flight = family(
        "stream_items_in_flight", "gauge", "Stream items received and not yet acked or terminated."
    )
    subscriptions = family("stream_subscriptions", "gauge", "Explicit stream subscriptions.")
    partitions = family("stream_partitions", "gauge", "Partitions of the stream provider.")
    owned = family("stream_owned_partitions", "gauge", "Stream partitions this silo pulls from.")
    lag = family(
        "stream_partition_lag",
        "gauge",
        "Stream items waiting behind the last one received, per owned partition.",
    )
    for stream in sorted(streams, key=lambda x: x.provider):
        labels = {**s, "provider": stream.provider}
        for field, f in stream_families:
            f.add(labels, getattr(stream, field))
        in_flight.add(labels, stream.in_flight)
        subscriptions.add(labels, stream.subscriptions)
        partitions.add(labels, stream.partitions)
        owned.add(labels, len(stream.owned_partitions))
        for partition, items in sorted(stream.lag.items()):
            if items is not None:  # the adapter does not report it
                lag.add({**labels, "partition": str(partition)}, items)

    lines = [line for f in families for line in f.render()]
    return "\n".join(lines) + "\n"
