"""The Prometheus renderer, on hand-made snapshots: names, labels, escaping, histograms."""

from __future__ import annotations

import re

from trio_grains_dashboard import BUCKET_BOUNDS_SECONDS, escape_label_value, render_prometheus
from trio_grains_dashboard._prometheus import escape_help

from trio_grains import (
    LatencyHistogram,
    MethodStatistics,
    MetricsSnapshot,
    SiloStatistics,
    StorageStatistics,
    StreamStatistics,
)

# One sample line of the text format 0.0.4: name{labels} value
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$"
)


def histogram(**by_bucket: int) -> LatencyHistogram:
    """A histogram with ``b<i>=n``: n durations in bucket i (below 2**i ns)."""
    buckets = [0] * 48
    for key, n in by_bucket.items():
        buckets[int(key[1:])] = n
    total = sum(buckets)
    return LatencyHistogram(count=total, sum_seconds=0.25, buckets=tuple(buckets))


def stats(**changes: object) -> SiloStatistics:
    values: dict[str, object] = {
        "name": "silo-a",
        "silo_id": "silo-a-1234",
        "activations": 7,
        "activations_by_type": {"cart": 5, "user": 2},
        "activations_created": 9,
        "queued_calls": 1,
        "waiting_callers": 2,
        "remote_calls_pending": 3,
        "calls_forwarded": 4,
        "active_silos": 2,
    }
    values.update(changes)
    return SiloStatistics(**values)  # type: ignore[arg-type]


def samples(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = value
    return out


def test_every_line_is_valid_exposition_and_families_are_typed() -> None:
    metrics = MetricsSnapshot(
        methods=(MethodStatistics("cart", "add", 40, 1, histogram(b11=2, b20=1)),),
        storage=(StorageStatistics("default", "write", 3, 0, histogram(b25=3)),),
        membership_changes=2,
    )
    stream = StreamStatistics(
        provider="default",
        partitions=4,
        owned_partitions=frozenset({0, 2}),
        delivered=10,
        failed=1,
        acked=9,
        redelivered=1,
        dead_lettered=1,
        in_flight=0,
        subscriptions=0,
        lag={0: 5, 2: None},
    )
    text = render_prometheus(stats(metrics=metrics), [stream])
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            typed[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
            name = line.split("{")[0].split(" ")[0]
            assert name.startswith("trio_grains_")
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in typed or typed.get(base) == "histogram", line
    for name, kind in typed.items():
        assert name.endswith("_total") == (kind == "counter"), name
    got = samples(text)
    assert got['trio_grains_activations{silo="silo-a"}'] == "7"
    assert got['trio_grains_grain_activations{silo="silo-a",grain_type="cart"}'] == "5"
    assert got['trio_grains_activations_created_total{silo="silo-a"}'] == "9"
    assert got['trio_grains_calls_forwarded_total{silo="silo-a"}'] == "4"
    assert got['trio_grains_active_silos{silo="silo-a"}'] == "2"
    cart_add = 'silo="silo-a",grain_type="cart",method="add"'
    assert got[f"trio_grains_grain_calls_total{{{cart_add}}}"] == "40"
    assert got[f"trio_grains_grain_call_errors_total{{{cart_add}}}"] == "1"
    assert got[f"trio_grains_grain_call_duration_seconds_count{{{cart_add}}}"] == "3"
    assert got[f"trio_grains_grain_call_duration_seconds_sum{{{cart_add}}}"] == "0.25"
    write = 'silo="silo-a",storage="default",operation="write"'
    assert got[f"trio_grains_storage_operations_total{{{write}}}"] == "3"
    assert got[f"trio_grains_storage_errors_total{{{write}}}"] == "0"
    assert got[f'trio_grains_storage_operation_duration_seconds_bucket{{{write},le="+Inf"}}'] == "3"
    assert got['trio_grains_membership_changes_total{silo="silo-a"}'] == "2"
    default = 'silo="silo-a",provider="default"'
    assert got[f"trio_grains_stream_items_delivered_total{{{default}}}"] == "10"
    assert got[f"trio_grains_stream_items_dead_lettered_total{{{default}}}"] == "1"
    assert got[f"trio_grains_stream_items_in_flight{{{default}}}"] == "0"
    assert got[f"trio_grains_stream_owned_partitions{{{default}}}"] == "2"
    assert got[f'trio_grains_stream_partition_lag{{{default},partition="0"}}'] == "5"
    # a partition whose adapter does not report its lag has no sample
    assert f'trio_grains_stream_partition_lag{{{default},partition="2"}}' not in got


def test_histogram_buckets_are_cumulative_in_seconds() -> None:
    # 2 durations below 2**11 ns, 1 below 2**20 ns, 1 below 2**3 ns (under the first bound),
    # 1 in the last raw bucket (above every finite bound)
    metrics = MetricsSnapshot(
        methods=(MethodStatistics("g", "m", 5, 0, histogram(b3=1, b11=2, b20=1, b47=1)),),
        storage=(),
        membership_changes=0,
    )
    got = samples(render_prometheus(stats(metrics=metrics)))
    labels = 'silo="silo-a",grain_type="g",method="m",'
    prefix = "trio_grains_grain_call_duration_seconds_bucket{" + labels
    buckets = {k[len(prefix) :]: int(v) for k, v in got.items() if k.startswith(prefix)}
    bounds = [f'le="{b!r}"}}' for b in BUCKET_BOUNDS_SECONDS] + ['le="+Inf"}']
    assert list(buckets) == bounds  # every bound, in order, always
    assert BUCKET_BOUNDS_SECONDS[0] == 1.024e-06  # 2**10 ns
    assert BUCKET_BOUNDS_SECONDS[-1] == 2**35 / 1e9
    le = dict(zip(BUCKET_BOUNDS_SECONDS, buckets.values(), strict=False))
    assert le[2**10 / 1e9] == 1  # the 2**3 ns one
    assert le[2**11 / 1e9] == 3
    assert le[2**19 / 1e9] == 3
    assert le[2**20 / 1e9] == 4
    assert le[2**35 / 1e9] == 4
    assert buckets['le="+Inf"}'] == 5
    values = list(buckets.values())
    assert values == sorted(values)  # cumulative


def test_label_values_and_help_are_escaped() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_help('a"b\\c\nd') == 'a"b\\\\c\\nd'  # quotes stay in HELP
    weird = 'we"ird\\type\nx'
    text = render_prometheus(
        stats(name='silo "one"', activations_by_type={weird: 1}),
    )
    assert 'trio_grains_activations{silo="silo \\"one\\""} 7' in text
    escaped = 'grain_type="we\\"ird\\\\type\\nx"'
    assert f'trio_grains_grain_activations{{silo="silo \\"one\\"",{escaped}}} 1' in text
    for line in text.splitlines():
        if not line.startswith("#"):
            assert SAMPLE.match(line), line


def test_without_metrics_only_the_silo_figures_and_silo_label_override() -> None:
    text = render_prometheus(stats(activations_by_type={}), silo="override")
    got = samples(text)
    assert got['trio_grains_activations{silo="override"}'] == "7"
    assert "grain_calls_total" not in text
    assert "membership_changes_total" not in text
    assert "stream_" not in text
    assert "trio_grains_grain_activations" not in text  # a family without samples is left out
