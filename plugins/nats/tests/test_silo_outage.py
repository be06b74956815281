"""``trio-grains silo`` stops in bounded time when NATS goes away: a SIGTERM during the
outage does not wait forever on goodbyes (membership, stream partitions) it cannot say."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import trio
from trio_grains_nats.testing import run_freezing_relay

GRAINS = """
from trio_grains import Grain, implicit_subscription


@implicit_subscription("jobs")
class JobGrain(Grain):
    async def on_stream_item(self, item: int) -> None:
        pass
"""


async def test_sigterm_while_nats_is_unreachable_stops_the_silo_in_bounded_time(
    nats_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    (tmp_path / "jobs.py").write_text(GRAINS)  # imported from the folder the silo runs in
    async with run_freezing_relay(nats_url) as relay:
        servers = relay.url
        (tmp_path / "silo.toml").write_text(
            f"""\
cluster_id = "outage{tag}"
grains = ["jobs:JobGrain"]
heartbeat_interval = 0.3
dead_after = 1.5

[clustering]
provider = "nats"
options = {{ servers = "{servers}" }}

[streams.default]
provider = "jetstream"
options = {{ servers = "{servers}", stream = "JOBS{tag}", prefix = "j{tag}", partitions = 2 }}
"""
        )
        out = tmp_path / "out.txt"
        with out.open("wb") as sink:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trio_grains.cli", "silo", "--config", "silo.toml"],
                cwd=tmp_path,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            with trio.fail_after(30):
                while "is serving" not in out.read_text():  # noqa: ASYNC110 - another process
                    await trio.sleep(0.05)
            relay.freeze()  # NATS is gone, as far as the silo can tell
            await trio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):  # dead_after, and a margin; it used to hang forever
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
            relay.thaw()
    text = out.read_text()
    assert code == 75, text  # declared dead by itself: a supervisor starts a fresh process
    assert "stopping gracefully" in text
    assert "start a fresh silo process" in text
