"""What the dashboard reads from a silo, taken at once, and its JSON form.

:func:`take_snapshot` reads a running silo (no I/O: statistics are in memory);
:func:`snapshot_json` and :func:`render_prometheus` turn the frozen result into what
``/api/stats`` and ``/metrics`` serve.
"""

from __future__ import annotations

from typing import Any

import attrs

from trio_grains import (
    LatencyHistogram,
    MembershipView,
    Silo,
    SiloStatistics,
    StreamStatistics,
)

from ._prometheus import render_prometheus

__all__ = ["Snapshot", "snapshot_json", "snapshot_prometheus", "take_snapshot"]


@attrs.frozen
class Snapshot:
    """One silo's figures at one moment: its statistics, each configured stream
    provider's, and the membership view (``None`` for a silo that runs alone)."""

    silo_id: str
    stats: SiloStatistics
    streams: tuple[StreamStatistics, ...]
    membership: MembershipView | None
    time: float  #: wall-clock seconds when it was taken


def take_snapshot(silo: Silo, *, now: float) -> Snapshot:
    streams = tuple(silo.get_stream_provider(name).statistics() for name in silo.config.streams)
    return Snapshot(silo.silo_id, silo.statistics(), streams, silo.membership_view, now)


def snapshot_prometheus(snapshot: Snapshot) -> str:
    return render_prometheus(snapshot.stats, snapshot.streams)


def _histogram(h: LatencyHistogram) -> dict[str, Any]:
    # buckets trimmed of trailing zeros: bucket i counts durations below 2**i ns
    buckets = list(h.buckets)
    while buckets and buckets[-1] == 0:
        buckets.pop()
    return {
        "count": h.count,
        "sum_seconds": h.sum_seconds,
        "p50": h.percentile(0.5),
        "p99": h.percentile(0.99),
        "buckets": buckets,
    }


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    """The figures as plain JSON data (what the page polls)."""
    stats = snapshot.stats
    out: dict[str, Any] = {
        "time": snapshot.time,
        "silo": {
            "name": stats.name,
            "silo_id": snapshot.silo_id,
            "activations": stats.activations,
            "activations_by_type": dict(sorted(stats.activations_by_type.items())),
            "activations_created": stats.activations_created,
            "queued_calls": stats.queued_calls,
            "waiting_callers": stats.waiting_callers,
            "remote_calls_pending": stats.remote_calls_pending,
            "calls_forwarded": stats.calls_forwarded,
            "active_silos": stats.active_silos,
        },
        "metrics": None,
        "streams": [],
        "membership": None,
    }
    metrics = stats.metrics
    if metrics is not None:
        out["metrics"] = {
            "methods": [
                {
                    "grain_type": m.grain_type,
                    "method": m.method,
                    "calls": m.calls,
                    "errors": m.errors,
                    "latency": _histogram(m.latency),
                }
                for m in sorted(metrics.methods, key=lambda m: (m.grain_type, m.method))
            ],
            "storage": [
                {
                    "storage": st.storage,
                    "operation": st.operation,
                    "calls": st.calls,
                    "errors": st.errors,
                    "latency": _histogram(st.latency),
                }
                for st in sorted(metrics.storage, key=lambda st: (st.storage, st.operation))
            ],
            "membership_changes": metrics.membership_changes,
        }
    for st in snapshot.streams:
        out["streams"].append(
            {
                "provider": st.provider,
                "partitions": st.partitions,
                "owned_partitions": sorted(st.owned_partitions),
                "delivered": st.delivered,
                "failed": st.failed,
                "acked": st.acked,
                "redelivered": st.redelivered,
                "dead_lettered": st.dead_lettered,
                "in_flight": st.in_flight,
                "subscriptions": st.subscriptions,
                # JSON object keys are strings; null: the adapter does not report lag
                "lag": {str(p): n for p, n in sorted(st.lag.items())},
            }
        )
    view = snapshot.membership
    if view is not None:
        out["membership"] = {
            "version": view.version,
            "silos": [
                {
                    "silo_id": e.silo_id,
                    "status": e.status.value,
                    "address": e.address,
                    "load": e.load,
                    "roles": sorted(e.roles),
                    "grain_types": sorted(e.grain_types),
                    "started_at": e.started_at,
                    "heartbeat_at": e.heartbeat_at,
                }
                for e in view.entries.values()
            ],
        }
    return out
