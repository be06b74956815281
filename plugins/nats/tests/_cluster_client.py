"""The client process of the multi-process cluster test (test_cluster_processes.py).

    python _cluster_client.py '<json settings>'

Settings: ``url``, ``cluster``, ``dir`` (handshake files), ``grains`` (how many cell
grains), ``load_grains`` (how many of them the load phase calls), ``concurrency`` (calls
in flight), ``silos`` (how many to wait for), ``deadline`` (seconds the load phase may
run after the kill at most).

1. Warm-up: ``set(1)`` on cells ``c0 .. c<grains-1>``, ``concurrency`` in flight; then
   ``<dir>/warm.json``.
2. Waits for ``<dir>/load.go``; then each of ``concurrency`` workers calls its share of the
   first ``load_grains`` cells round after round, ``set(2)``, ``set(3)``, ... (one grain's
   calls one after another), writing the number of successful calls to
   ``<dir>/progress`` as it goes. A call that fails with ``SiloUnavailableError`` (or times
   out) is retried with the same seq: ``set`` is idempotent.
3. Once ``<dir>/killed.json`` names the kill time, the load stops as soon as every load
   grain has answered a call after that time; ``<dir>/load.json`` reports every
   successful call (grain, seq, completion time, answering silo, applied) and every
   failure.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import trio
from _cluster_grains import CellGrain
from _processes import run_process_main, write_atomically

from trio_grains import ClientConfig, GrainCallTimeoutError, SiloUnavailableError, open_client

SETTINGS: dict[str, Any] = json.loads(sys.argv[1])
DIR = Path(SETTINGS["dir"])
N: int = SETTINGS["grains"]
LOAD: int = SETTINGS["load_grains"]
CONCURRENCY: int = SETTINGS["concurrency"]

retries: collections.Counter[str] = collections.Counter()
errors: list[str] = []


async def set_until_done(cell: CellGrain, seq: int) -> tuple[str, bool]:
    """``cell.set(seq)``, retried while its silo is unavailable; (silo, applied)."""
    while True:
        try:
            result = await cell.set(seq)
        except (SiloUnavailableError, GrainCallTimeoutError) as exc:
            retries[type(exc).__name__] += 1
            await trio.sleep(0.05)
            continue
        except Exception as exc:
            errors.append(f"{cell!r}.set({seq}): {exc!r}")
            await trio.sleep(0.05)
            continue
        return result.silo, result.applied


async def main() -> None:
    config = ClientConfig.from_dict(
        {
            "cluster_id": SETTINGS["cluster"],
            "clustering": {"provider": "nats", "options": {"servers": SETTINGS["url"]}},
            "response_timeout": SETTINGS.get("response_timeout", 10.0),
        }
    )
    async with open_client(config) as client:
        with trio.fail_after(30):
            await client.wait_for_silos(SETTINGS["silos"])
        cells = [client.get_grain(CellGrain, f"c{i}") for i in range(N)]

        # 1. warm-up
        began = time.time()
        queue = iter(range(N))
        where: dict[int, str] = {}

        async def warm_worker() -> None:
            for i in queue:
                where[i], _ = await set_until_done(cells[i], 1)

        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(warm_worker)
        warm = {
            "seconds": time.time() - began,
            "where": [where[i] for i in range(N)],
            "retries": dict(retries),
            "errors": list(errors),
        }
        write_atomically(DIR / "warm.json", json.dumps(warm))

        # 2. load until every load grain answered after the kill
        while not (DIR / "load.go").exists():  # noqa: ASYNC110 - polling a file
            await trio.sleep(0.01)
        began = time.time()
        calls: list[tuple[int, int, float, str, bool]] = []
        last_ok = [0.0] * LOAD
        stop = False
        killed_at = math.inf

        async def load_worker(mine: list[int]) -> None:
            seq = 1
            while not stop:
                seq += 1
                for i in mine:
                    silo, applied = await set_until_done(cells[i], seq)
                    now = time.time()
                    calls.append((i, seq, now, silo, applied))
                    last_ok[i] = now
                    if stop:
                        return

        async def monitor() -> None:
            nonlocal stop, killed_at
            while True:
                write_atomically(DIR / "progress", str(len(calls)))
                if killed_at == math.inf and (DIR / "killed.json").exists():
                    killed_at = json.loads((DIR / "killed.json").read_text())["time"]
                if min(last_ok) > killed_at or time.time() > killed_at + SETTINGS["deadline"]:
                    stop = True
                    return
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor)
            for w in range(CONCURRENCY):
                nursery.start_soon(load_worker, list(range(w, LOAD, CONCURRENCY)))
        report = {
            "began": began,
            "ended": time.time(),
            "killed_at": killed_at,
            "calls": calls,
            "retries": dict(retries),
            "errors": errors,
        }
        write_atomically(DIR / "load.json", json.dumps(report))


if __name__ == "__main__":
    run_process_main(main, "client")
