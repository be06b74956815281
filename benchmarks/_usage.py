"""What a measured interval cost: CPU seconds per process and nats-server message counts.

Linux only for the CPU (``/proc/<pid>/stat``: user + system time of the whole process, all
its threads; 0.0 where ``/proc`` is missing). The message counts come from nats-server's
monitoring endpoint (``/varz`` ``in_msgs`` / ``out_msgs``: every message the server
received from, and delivered to, any connection, JetStream's API and acks included), read
with the standard library's ``urllib``; the server must run with ``-m <port>``
(``run_nats_server(..., monitor_port=...)``).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid* so far (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid() -> int | None:
    """The pid of our nats-server child (Linux ``/proc``), for its CPU time; None if unknown."""
    try:
        tasks = Path(f"/proc/{os.getpid()}/task").iterdir()
        children = [int(c) for t in tasks for c in (t / "children").read_text().split()]
        for pid in children:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "nats-server":
                return pid
    except (OSError, ValueError):
        pass
    return None


def varz(monitor_port: int) -> dict[str, Any]:
    """nats-server's ``/varz`` (general statistics) on 127.0.0.1:*monitor_port*."""
    url = f"http://127.0.0.1:{monitor_port}/varz"
    with urllib.request.urlopen(url, timeout=5) as answer:
        data: dict[str, Any] = json.load(answer)
    return data


def msg_counts(monitor_port: int) -> tuple[int, int]:
    """``(in_msgs, out_msgs)`` of the server so far (``/varz``)."""
    v = varz(monitor_port)
    return int(v["in_msgs"]), int(v["out_msgs"])


@dataclass(frozen=True)
class Sample:
    cpu: dict[str, float]  # process name -> CPU seconds so far
    in_msgs: int | None
    out_msgs: int | None


@dataclass(frozen=True)
class Usage:
    """The difference of two samples: CPU seconds per process name, messages."""

    cpu: dict[str, float]
    in_msgs: int | None
    out_msgs: int | None

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu.values())


def sample(pids: Mapping[str, int | None], monitor_port: int | None = None) -> Sample:
    """CPU of each named process (None: not known, counted as 0.0) and the server's counters."""
    cpu = {name: cpu_seconds(pid) if pid else 0.0 for name, pid in pids.items()}
    if monitor_port is None:
        return Sample(cpu, None, None)
    return Sample(cpu, *msg_counts(monitor_port))


def usage(before: Sample, after: Sample) -> Usage:
    cpu = {name: after.cpu[name] - before.cpu[name] for name in before.cpu}

    def diff(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else b - a

    return Usage(cpu, diff(before.in_msgs, after.in_msgs), diff(before.out_msgs, after.out_msgs))


def default_grain_directory() -> str:
    """Which grain directory a clustered silo uses by default (``SiloConfig.grain_directory``;
    ``"provider"``, the clustering provider's, where the setting does not exist)."""
    from trio_grains import SiloConfig

    return str(getattr(SiloConfig(), "grain_directory", "provider"))
