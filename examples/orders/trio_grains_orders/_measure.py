"""What the demo measures: when each order is due (pacing), the CPU time of its processes,
and the summary of a phase (throughput, latency percentiles, CPU per order).

Latency is only a latency below saturation. Published all at once, 10,000 orders wait in
the stream for seconds and their "latency" is mostly the time the backlog takes to drain;
so the demo publishes on a schedule (:class:`Pacer`) and takes each order's publish time
to be the time it was *due*, not the time a publisher got to it: a publisher that falls
behind the schedule then shows as latency instead of hiding it (the coordinated
omission that a closed loop of publishers would have).

CPU time comes from ``/proc/<pid>/stat`` (Linux) for the silos and the nats-server, and
from :func:`time.process_time` for this process. Where ``/proc`` is missing (macOS, ...)
the other processes' share is reported as not measured instead of guessed.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import trio

__all__ = [
    "CpuMeter",
    "CpuPerOrder",
    "CpuSample",
    "Pacer",
    "PhaseSummary",
    "cpu_seconds",
    "find_child",
    "percentile",
    "summarize",
]

PROC = Path("/proc")


@attrs.define(eq=False)
class Pacer:
    """Hands out the indices ``0 .. count-1`` as they become due, in small bursts.

    Order *i* is due at ``start + i / rate`` on Trio's clock; :meth:`next_burst` sleeps
    until the next order is due, but never wakes more often than every *tick* seconds, and
    then returns every index due by now: at 1,000 orders/s and a 10 ms tick, bursts of
    about ten. Sleeping until a deadline computed from *start* (not ``sleep(1 / rate)``
    in a loop) keeps the rate exact however late a wake-up is: a late wake-up makes a
    larger burst.
    """

    count: int
    rate: float
    start: float
    tick: float = 0.01
    _handed: int = 0
    _last_wake: float = -math.inf

    def __attrs_post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"the rate must be positive, not {self.rate}")

    def due(self, i: int) -> float:
        """When order *i* is due (Trio's clock)."""
        return self.start + i / self.rate

    def due_by(self, now: float) -> int:
        """How many orders are due at *now* (``due(i) <= now``), at most *count*."""
        return max(0, min(self.count, math.floor((now - self.start) * self.rate) + 1))

    async def next_burst(self) -> range:
        """The indices due now, after sleeping until there is one; empty when all are out."""
        if self._handed >= self.count:
            return range(self.count, self.count)
        await trio.sleep_until(max(self.due(self._handed), self._last_wake + self.tick))
        self._last_wake = trio.current_time()
        # at least one: the float in due_by may round the index just due down
        end = max(self._handed + 1, self.due_by(self._last_wake))
        burst = range(self._handed, end)
        self._handed = end
        return burst


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name; None if unreadable."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the name is in parentheses and may hold any


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process *pid* so far; None without ``/proc`` or once
    the process is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    # fields[0] is the state (field 3 of proc(5)): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def find_child(name: str) -> int | None:
    """The pid of a child of this process whose command name is *name* (``/proc``);
    None where there is none or no ``/proc``."""
    me = str(os.getpid())
    try:
        entries = [p for p in PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        if comm == name and fields[1] == me:
            return int(entry.name)
    return None


@attrs.frozen
class CpuSample:
    """CPU seconds used so far: by the silos (together), this process and the nats-server;
    None for what could not be read."""

    silos: float | None
    client: float
    server: float | None


@attrs.define(eq=False)
class CpuMeter:
    """Samples the CPU time of the demo's processes.

    A silo's last reading is kept: one that was killed counts up to the last sample taken
    before it died (the demo samples at every progress poll, four times a second).
    """

    silo_pids: Sequence[int]
    server_pid: int | None
    _last: dict[int, float] = attrs.field(factory=dict)

    def sample(self) -> CpuSample:
        for pid in self.silo_pids:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                self._last[pid] = seconds
        silos = sum(self._last.values()) if self._last else None
        server = None if self.server_pid is None else cpu_seconds(self.server_pid)
        return CpuSample(silos=silos, client=time.process_time(), server=server)


@attrs.frozen
class CpuPerOrder:
    """CPU microseconds per order between two samples, by process kind (None: unknown)."""

    silos: float | None
    client: float
    server: float | None

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample, orders: int) -> CpuPerOrder:
        def per_order(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else (b - a) / max(orders, 1) * 1e6

        return cls(
            silos=per_order(before.silos, after.silos),
            client=(after.client - before.client) / max(orders, 1) * 1e6,
            server=per_order(before.server, after.server),
        )

    @property
    def total(self) -> float | None:
        """Over every process, or None when a part is not measured."""
        if self.silos is None or self.server is None:
            return None
        return self.silos + self.client + self.server

    def text(self) -> str:
        parts = {"silos": self.silos, "client": self.client, "nats-server": self.server}
        known = ", ".join(f"{k} {v:,.0f}" for k, v in parts.items() if v is not None)
        if self.total is not None:
            return f"{self.total:,.0f} us ({known})"
        unknown = " and ".join(k for k, v in parts.items() if v is None)
        return f"{known} us ({unknown} not measured: no /proc here)"


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of non-empty *sorted_values*."""
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


@attrs.frozen
class PhaseSummary:
    """What one phase of the demo measured.

    *rate* is the pace it was published at (None: unpaced); *throughput* is the orders
    processed per second from the first order's publish to the last one's processing;
    *sustained* the rate at which the last 90 % were processed, once the processing was
    under way (unpaced, what the cluster sustains: the first orders meet cold silos and
    a backlog still filling up); *latency_ms* maps ``p50``, ``p90``, ``p99`` and ``max``
    to milliseconds from publish to processed (empty when nothing was processed); *cpu*
    is per order, every process.
    """

    label: str
    rate: float | None
    orders: int
    processed: int
    seconds: float
    throughput: float
    sustained: float
    latency_ms: Mapping[str, float]
    cpu: CpuPerOrder

    @property
    def saturated(self) -> bool:
        """Published faster than processed: the latencies measure a backlog."""
        return self.rate is None or self.throughput < 0.9 * self.rate

    def lines(self) -> list[str]:
        head = f"{self.label}: {self.processed:,}/{self.orders:,} orders processed in "
        head += f"{self.seconds:.1f} s: {self.throughput:,.0f} orders/s"
        if self.rate is None:
            head += f", {self.sustained:,.0f}/s sustained (the last 90 %)"
        if self.rate is not None and self.saturated:
            head += f", below the {self.rate:,.0f} asked: the cluster did not keep up"
        lines = [head]
        if self.latency_ms:
            latency = ", ".join(f"{k} {v:,.0f} ms" for k, v in self.latency_ms.items())
            note = " (saturated: mostly time waiting in the backlog)" if self.saturated else ""
            lines.append(f"latency, publish to processed: {latency}{note}")
        lines.append(f"cpu per order: {self.cpu.text()}")
        return lines


def summarize(
    label: str,
    rate: float | None,
    published: Mapping[str, datetime.datetime],
    processed: Mapping[str, datetime.datetime | None],
    cpu: CpuPerOrder,
) -> PhaseSummary:
    """The summary of a phase from when its orders were published (by id) and when each
    was processed (None: not yet)."""
    done = {i: at for i, at in processed.items() if at is not None and i in published}
    latencies = sorted((at - published[i]).total_seconds() * 1000 for i, at in done.items())
    seconds = sustained = 0.0
    if done:
        seconds = (max(done.values()) - min(published.values())).total_seconds()
        ends = sorted(done.values())
        tenth = len(ends) // 10
        window = (ends[-1] - ends[tenth]).total_seconds()
        sustained = (len(ends) - 1 - tenth) / window if window > 0 else 0.0
    return PhaseSummary(
        label=label,
        rate=rate,
        orders=len(published),
        processed=len(done),
        seconds=seconds,
        throughput=len(done) / seconds if seconds > 0 else 0.0,
        sustained=sustained,
        latency_ms={k: percentile(latencies, q) for k, q in PERCENTILES} if latencies else {},
        cpu=cpu,
    )
