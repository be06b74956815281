"""A silo process for the hostile-client suite, until it is killed.

    python _hostile_silo.py '<json settings>'

Settings: ``url`` (nats), ``cluster`` (cluster id), ``dir``, ``label``, ``silos`` (how many
active silos to wait for). Hosts :class:`RelayGrain` and :class:`CounterGrain` (memory
storage, no streams). Once it sees ``silos`` active silos it writes
``<dir>/<label>.ready`` (its silo id); from then on, every 50 ms,
``<dir>/<label>.stats.json``: its ``statistics().dropped_messages`` (if it has them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.append(str(Path(__file__).resolve().parent.parent))  # _processes.py

from _hostile_grains import CounterGrain, RelayGrain
from _processes import run_process_main, write_atomically

from trio_grains import SiloConfig, open_silo

SETTINGS: dict[str, Any] = json.loads(sys.argv[1])
DIR = Path(SETTINGS["dir"])
LABEL: str = SETTINGS["label"]


async def main() -> None:
    config = SiloConfig.from_dict(
        {
            "name": f"silo-{LABEL}",
            "cluster_id": SETTINGS["cluster"],
            "heartbeat_interval": 0.5,
            "dead_after": 5.0,
            "response_timeout": 20.0,
            "clustering": {"provider": "nats", "options": {"servers": SETTINGS["url"]}},
        }
    )
    async with open_silo(config, grains=[RelayGrain, CounterGrain]) as silo:
        while silo.statistics().active_silos < SETTINGS["silos"]:  # noqa: ASYNC110 - polling
            await trio.sleep(0.02)
        write_atomically(DIR / f"{LABEL}.ready", silo.silo_id)
        while True:
            dropped = getattr(silo.statistics(), "dropped_messages", None)
            stats = {"dropped_messages": None if dropped is None else dict(dropped)}
            write_atomically(DIR / f"{LABEL}.stats.json", json.dumps(stats))
            await trio.sleep(0.05)


if __name__ == "__main__":
    run_process_main(main, LABEL)
