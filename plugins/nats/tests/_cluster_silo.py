"""One silo of a multi-process cluster (test_cluster_processes.py), until it is killed.

    python _cluster_silo.py '<json settings>'

Settings: ``url`` (nats), ``cluster`` (cluster id), ``db`` (the shared sqlite file),
``label``, ``dir`` (where the handshake files are), ``silos`` (how many silos to wait
for), ``heartbeat_interval``, ``dead_after``, and for the directory race ``race``:
``{"keys": [...], "calls": 50}``.

Once this silo sees ``silos`` active silos it writes ``<dir>/<label>.ready`` (its silo
id). With ``race``, it then waits for ``<dir>/race.go`` (a wall-clock start time), makes
``calls`` concurrent first calls to each race grain at that moment, and writes the
results to ``<dir>/race-<label>.json``. Either way it then runs until it is killed,
and whenever ``<dir>/dump-<n>`` appears it writes its share of the in-cluster grain
directory to ``<dir>/<label>.directory-<n>.json`` (``[[grain, silo, activation], ...]``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import trio
from _cluster_grains import CellGrain, HitResult, RaceGrain
from _processes import read_if_exists, run_process_main, write_atomically

from trio_grains import Silo, SiloConfig, open_silo

SETTINGS: dict[str, Any] = json.loads(sys.argv[1])
DIR = Path(SETTINGS["dir"])
LABEL: str = SETTINGS["label"]


async def wait_for_file(path: Path) -> str:
    while (text := read_if_exists(path)) is None:  # noqa: ASYNC110 - another process writes it
        await trio.sleep(0.01)
    return text


async def race(silo: Silo, keys: list[str], calls: int) -> None:
    start = float(await wait_for_file(DIR / "race.go"))
    await trio.sleep(max(0.0, start - time.time()))
    results: dict[str, list[HitResult]] = {key: [] for key in keys}
    errors: list[str] = []

    async def one(key: str) -> None:
        try:
            results[key].append(await silo.get_grain(RaceGrain, key).hit())
        except Exception as exc:
            errors.append(f"{key}: {exc!r}")

    began = time.time()
    # each silo goes through the keys in its own order: for every key, some silo's
    # first call comes first, and the others' follow within milliseconds
    shift = SETTINGS["index"] * len(keys) // SETTINGS["silos"]
    keys = keys[shift:] + keys[:shift]
    async with trio.open_nursery() as nursery:
        for key in keys:
            for _ in range(calls):
                nursery.start_soon(one, key)
    stats = silo.statistics()
    report = {
        "silo": silo.silo_id,
        "began": began,
        "late_by": began - start,
        "results": {k: [[r.hits, r.activation, r.silo] for r in v] for k, v in results.items()},
        "errors": errors,
        "race_activations": stats.activations_by_type.get("race", 0),
        "activations_created": stats.activations_created,
    }
    write_atomically(DIR / f"race-{LABEL}.json", json.dumps(report))


async def main() -> None:
    config = SiloConfig.from_dict(
        {
            "name": f"silo-{LABEL}",
            "cluster_id": SETTINGS["cluster"],
            "heartbeat_interval": SETTINGS["heartbeat_interval"],
            "dead_after": SETTINGS["dead_after"],
            "response_timeout": SETTINGS.get("response_timeout", 10.0),
            "storage": {"shared": {"provider": "sqlite", "options": {"path": SETTINGS["db"]}}},
            "clustering": {"provider": "nats", "options": {"servers": SETTINGS["url"]}},
        }
    )
    async with open_silo(config, grains=[CellGrain, RaceGrain]) as silo:
        cluster = silo.cluster
        assert cluster is not None
        while len(cluster.locator.view.active()) < SETTINGS["silos"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
        write_atomically(DIR / f"{LABEL}.ready", silo.silo_id)
        print(f"ready {silo.silo_id}", flush=True)
        race_settings = SETTINGS.get("race")
        if race_settings is not None:
            await race(silo, race_settings["keys"], race_settings["calls"])
        await dump_directory_on_request(silo)


async def dump_directory_on_request(silo: Silo) -> None:
    """Write this silo's directory share each time the test asks (``dump-<n>``)."""
    assert silo.cluster is not None
    distributed = silo.cluster.distributed
    assert distributed is not None
    n = 0
    while True:
        await wait_for_file(DIR / f"dump-{n}")
        entries = distributed.partition.entries.values()
        rows = [[str(e.grain_id), e.silo_id, e.activation_id] for e in entries]
        write_atomically(DIR / f"{LABEL}.directory-{n}.json", json.dumps(rows))
        n += 1


if __name__ == "__main__":
    run_process_main(main, LABEL)
