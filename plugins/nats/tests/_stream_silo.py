"""One silo of the multi-process stream test (test_cluster_streams_processes.py), until
it is killed.

    python _stream_silo.py '<json settings>'

Settings: ``url`` (nats), ``cluster`` (cluster id), ``dir`` (handshake and record files),
``label``, ``silos`` (how many active silos to wait for), ``heartbeat_interval``,
``dead_after``, ``streams`` (the ``jetstream`` provider's options), ``hold`` (seconds the
grain holds each item before recording it).

Deliveries of :class:`~_stream_grains.NumGrain` go to ``<dir>/<label>.deliveries``. Once
this silo sees ``silos`` active silos it writes ``<dir>/<label>.ready`` (its silo id);
then, every 50 ms, ``<dir>/<label>.owned`` (JSON: the partitions it pulls).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio
from _processes import run_process_main, write_atomically
from _stream_grains import NumGrain, record_to

from trio_grains import SiloConfig, open_silo

SETTINGS: dict[str, Any] = json.loads(sys.argv[1])
DIR = Path(SETTINGS["dir"])
LABEL: str = SETTINGS["label"]


async def main() -> None:
    record_to(DIR / f"{LABEL}.deliveries", SETTINGS["hold"])
    config = SiloConfig.from_dict(
        {
            "name": f"silo-{LABEL}",
            "cluster_id": SETTINGS["cluster"],
            "heartbeat_interval": SETTINGS["heartbeat_interval"],
            "dead_after": SETTINGS["dead_after"],
            "clustering": {"provider": "nats", "options": {"servers": SETTINGS["url"]}},
            "streams": {"default": {"provider": "jetstream", "options": SETTINGS["streams"]}},
        }
    )
    async with open_silo(config, grains=[NumGrain]) as silo:
        cluster = silo.cluster
        assert cluster is not None
        while len(cluster.locator.view.active()) < SETTINGS["silos"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
        write_atomically(DIR / f"{LABEL}.ready", silo.silo_id)
        print(f"ready {silo.silo_id}", flush=True)
        provider = silo.get_stream_provider()
        while True:
            owned = sorted(provider.statistics().owned_partitions)
            write_atomically(DIR / f"{LABEL}.owned", json.dumps(owned))
            await trio.sleep(0.05)


if __name__ == "__main__":
    run_process_main(main, LABEL)
