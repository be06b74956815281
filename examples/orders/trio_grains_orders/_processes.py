"""The demo's processes: silo processes (``trio-grains silo --config``) and their configs.

Each silo runs in its own session (``start_new_session``), so a Ctrl-C in the terminal
reaches only the demo, which then stops the silos in order (SIGTERM: a graceful stop) and
the nats-server last. Nothing is left running: a silo that does not stop within
``STOP_GRACE`` seconds is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

__all__ = ["ClusterLayout", "DemoError", "SiloProcess", "run_silos"]

STOP_GRACE = 20.0
"""Seconds a silo gets to stop gracefully (deactivate, release partitions, leave)."""

GRAINS = ("OrderGrain", "CustomerGrain", "DeadLetterGrain")


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


@attrs.frozen
class ClusterLayout:
    """What every process of the demo cluster is configured with."""

    servers: str
    cluster_id: str = "orders-demo"
    stream: str = "ORDERS"  # the JetStream stream ...
    prefix: str = "orders"  # ... its subjects' prefix
    bucket: str = "orders-state"  # the KV bucket of grain states
    partitions: int = 8
    ack_wait: float = 4.0
    heartbeat_interval: float = 0.5
    dead_after: float = 2.5
    dashboard_port: int | None = None  # silo-1 serves the dashboard there (metrics on)

    def streams_options(self) -> dict[str, object]:
        return {
            "servers": self.servers,
            "stream": self.stream,
            "prefix": self.prefix,
            "partitions": self.partitions,
            "ack_wait": self.ack_wait,
            "backoff": 0.2,
        }

    def client_toml(self) -> str:
        """The ``trio-grains client --config`` file."""
        return f"""\
cluster_id = "{self.cluster_id}"

[clustering]
provider = "nats"
options = {{ servers = "{self.servers}" }}

[streams.default]
provider = "jetstream"
options = {_inline_table(self.streams_options())}
"""

    def silo_toml(self, name: str) -> str:
        """The ``trio-grains silo --config`` file of silo *name*."""
        grains = ", ".join(f'"trio_grains_orders.app:{g}"' for g in GRAINS)
        streams = _inline_table(self.streams_options())
        dashboard = ""
        if self.dashboard_port is not None and name == "silo-1":
            dashboard = f"""
[services.dashboard]
provider = "dashboard"
options = {{ port = {self.dashboard_port} }}
"""
        return f"""\
name = "{name}"
cluster_id = "{self.cluster_id}"
grains = [{grains}]
heartbeat_interval = {self.heartbeat_interval}
dead_after = {self.dead_after}
metrics = {"true" if self.dashboard_port is not None else "false"}
remote_tracebacks = true  # a demo: show where a grain failed (off by default)
{dashboard}
[clustering]
provider = "nats"
options = {{ servers = "{self.servers}" }}

[storage.default]
provider = "nats-kv"
options = {{ servers = "{self.servers}", bucket = "{self.bucket}" }}

[streams.default]
provider = "jetstream"
options = {streams}
"""


def _inline_table(values: dict[str, object]) -> str:
    def value(v: object) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v)

    return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in values.items()) + " }"


@attrs.define(eq=False)
class SiloProcess:
    """One ``trio-grains silo`` process and its log file."""

    name: str
    log_path: Path
    process: trio.Process
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the silo dies without a word (its partitions and grains fail over)."""
        self.killed = True
        self.process.kill()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


async def _start(layout: ClusterLayout, workdir: Path, name: str) -> SiloProcess:
    config = workdir / f"{name}.toml"
    config.write_text(layout.silo_toml(name))
    log_path = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - a local file, once per silo
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_grains.cli", "silo", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return SiloProcess(name, log_path, process)


async def _stop(silos: Sequence[SiloProcess]) -> None:
    """SIGTERM every live silo, wait up to STOP_GRACE, then SIGKILL what is left."""
    for silo in silos:
        if silo.process.returncode is None:
            silo.process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE):
        for silo in silos:
            await silo.process.wait()
    for silo in silos:
        if silo.process.returncode is None:
            silo.process.kill()
            await silo.process.wait()


async def _watch(silo: SiloProcess, stopping: list[bool]) -> None:
    code = await silo.process.wait()
    if not silo.killed and not stopping:
        raise DemoError(
            f"{silo.name} (pid {silo.pid}) exited with status {code}; the end of its log:\n"
            f"{silo.log_tail()}"
        )


@asynccontextmanager
async def run_silos(
    layout: ClusterLayout, workdir: Path, count: int
) -> AsyncIterator[list[SiloProcess]]:
    """Start *count* silo processes; yield them; stop them all when the block ends (also on
    Ctrl-C or an error). A silo that exits on its own, not killed by us, is a
    :class:`DemoError` in the block."""
    silos: list[SiloProcess] = []
    stopping: list[bool] = []
    try:
        async with trio.open_nursery() as nursery:
            for i in range(1, count + 1):
                silo = await _start(layout, workdir, f"silo-{i}")
                silos.append(silo)
                nursery.start_soon(_watch, silo, stopping)
            try:
                yield silos
            finally:
                stopping.append(True)
                with trio.CancelScope(shield=True):
                    await _stop(silos)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(silos)  # a start that failed half-way
