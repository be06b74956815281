"""The grain of the multi-process stream test (test_cluster_streams_processes.py).

Imported by ``_stream_silo.py`` (run as ``python _stream_silo.py`` with this directory
first on ``sys.path``).

:class:`NumGrain` is implicitly subscribed to namespace ``nums``. It is a stateless worker,
so the silo that pulls an item's partition handles the item itself (a grain with one
activation in the cluster would stay where it was first placed while partitions move
around it): the silo id it records is the pulling silo's. It holds each item a moment
(``hold``), then records it as one line ``<key> <item> <silo id> <time.time()>``
appended to the process's deliveries file (:func:`record_to`) with one ``write(2)`` on
an ``O_APPEND`` descriptor: the line is in the file (the kernel's) before the handler
returns, hence before the item is acknowledged, and a ``SIGKILL`` cannot lose it or tear
it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from trio_grains import Grain, implicit_subscription, stateless_worker

_fd: int | None = None
_hold = 0.0


def record_to(path: Path, hold: float) -> None:
    """Append this process's deliveries to *path*; each item is held *hold* seconds
    before it is recorded (received, not yet handled: what a kill leaves in flight)."""
    global _fd, _hold
    _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _hold = hold


@implicit_subscription("nums")
@stateless_worker(max_local=1)
class NumGrain(Grain):
    async def on_stream_item(self, item: int) -> None:
        assert _fd is not None
        await trio.sleep(_hold)
        line = f"{self.primary_key} {item} {self.runtime_identity} {time.time():.6f}\n"
        os.write(_fd, line.encode())
