"""A cluster of real processes: 3 silo processes (and a client process) over a real
nats-server, sharing one sqlite file for grain state. No mocks.

* 10,000 grains called from the client activate exactly once each (the counter in their
  persistent state, and exactly one directory entry each, on a live silo, naming that
  activation); then one silo is SIGKILLed mid-load: calls resume on the survivors within
  the failure-detection time, no grain has two activations at once, and the persisted
  state holds every acknowledged update (and nothing more).
* 50 concurrent first calls to one grain from inside each of 3 silo processes make one
  activation.

The processes run ``_cluster_silo.py`` and ``_cluster_client.py`` (grains in
``_cluster_grains.py``); they talk to the test through files in ``tmp_path`` and log
there too; the logs are printed when a test fails.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import trio
from _processes import Processes, processes, read_if_exists

from trio_grains import DirectoryEntry, GrainId

HERE = Path(__file__).parent
SILO_SCRIPT = HERE / "_cluster_silo.py"
CLIENT_SCRIPT = HERE / "_cluster_client.py"

# Failure detection. With dead_after = 1.5 s, a silo starved of CPU during the warm-up
# (5 busy processes on 2 cores) could miss its heartbeats for that long and fence itself.
HEARTBEAT = 0.5
DEAD_AFTER = 3.0
GRAINS = 10_000
LOAD_GRAINS = 1_500  # the cells the load phase (and the kill) is about
CONCURRENCY = 200


async def wait_for_file(procs: Processes, path: Path) -> str:
    """The text of *path* once a child process has written it (they write atomically)."""
    while (text := read_if_exists(path)) is None:
        procs.check_running()
        await trio.sleep(0.02)
    return text


def read_states(db: Path, grain_type: str) -> dict[str, dict[str, Any]]:
    """grain key -> its stored state (decoded), straight from the shared sqlite file."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT grain_key, data FROM grain_state WHERE grain_type = ?", (grain_type,)
        ).fetchall()
    return {key: msgpack.unpackb(data) for key, data in rows}


async def directory_entries(
    procs: Processes, labels: Iterable[str]
) -> dict[str, list[DirectoryEntry]]:
    """The in-cluster directory's entries: every live silo's share, as it dumps it."""
    n = len(list(procs.dir.glob("dump-*")))  # (the silos count their dumps from 0)
    (procs.dir / f"dump-{n}").write_text("")
    found: dict[str, list[DirectoryEntry]] = collections.defaultdict(list)
    with trio.fail_after(30):
        for label in labels:
            path = procs.dir / f"{label}.directory-{n}.json"
            while (text := read_if_exists(path)) is None:  # noqa: ASYNC110 - another process
                await trio.sleep(0.01)
            for grain, silo, activation in json.loads(text):
                found[grain].append(DirectoryEntry(GrainId.parse(grain), silo, activation))
    return found


def silo_settings(
    nats_url: str, cluster: str, db: Path, directory: Path, label: str
) -> dict[str, Any]:
    return {
        "url": nats_url,
        "cluster": cluster,
        "db": str(db),
        "dir": str(directory),
        "label": label,
        "index": "abc".index(label),
        "silos": 3,
        "heartbeat_interval": HEARTBEAT,
        "dead_after": DEAD_AFTER,
    }


async def start_silos(procs: Processes, settings: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Start the silos; label -> silo id once each sees them all active."""
    for label, s in settings.items():
        await procs.start(label, SILO_SCRIPT, s)
    with trio.fail_after(30):
        return {
            label: await wait_for_file(procs, procs.dir / f"{label}.ready") for label in settings
        }


async def test_ten_thousand_grains_then_a_silo_is_killed_mid_load(
    nats_url: str, tmp_path: Path
) -> None:
    cluster = f"p{uuid.uuid4().hex[:8]}"
    db = tmp_path / "grains.db"
    t0 = time.monotonic()
    async with processes(tmp_path) as procs:
        labels = ("a", "b", "c")
        silo_ids = await start_silos(
            procs, {lab: silo_settings(nats_url, cluster, db, tmp_path, lab) for lab in labels}
        )
        await procs.start(
            "client",
            CLIENT_SCRIPT,
            {
                "url": nats_url,
                "cluster": cluster,
                "dir": str(tmp_path),
                "grains": GRAINS,
                "load_grains": LOAD_GRAINS,
                "concurrency": CONCURRENCY,
                "silos": 3,
                "deadline": DEAD_AFTER * 10,
            },
        )
        with trio.fail_after(60):
            warm = json.loads(await wait_for_file(procs, tmp_path / "warm.json"))
        t_warm = time.monotonic()
        assert warm["errors"] == []

        # -- every grain activated exactly once: in storage ...
        states = read_states(db, "cell")
        assert len(states) == GRAINS
        assert {s["activations"] for s in states.values()} == {1}
        assert {(s["seq"], s["count"]) for s in states.values()} == {(1, 1)}
        # ... and in the directory: one entry per grain, on a live silo, naming the
        # activation that wrote the state
        entries = await directory_entries(procs, labels)
        assert len(entries) == GRAINS
        live = set(silo_ids.values())
        for i in range(GRAINS):
            (entry,) = entries[f"cell/c{i}"]
            assert entry.silo_id in live
            assert entry.silo_id == warm["where"][i]
            assert entry.activation_id == states[f"c{i}"]["owner"]
        per_silo = collections.Counter(e[0].silo_id for e in entries.values())
        assert len(per_silo) == 3
        assert min(per_silo.values()) > GRAINS / 10, per_silo

        # -- kill -9 one silo mid-load
        victim = silo_ids["b"]
        on_victim = {i for i in range(LOAD_GRAINS) if warm["where"][i] == victim}
        assert on_victim
        (tmp_path / "load.go").write_text("go")
        # a round of load calls done: then the kill lands while calls are in flight
        progress = tmp_path / "progress"
        with trio.fail_after(30):
            while int(read_if_exists(progress) or 0) < LOAD_GRAINS:
                procs.check_running()
                await trio.sleep(0.01)
        killed_at = time.time()
        procs.expected_dead.add("b")
        await procs.kill("b")
        (tmp_path / "killed.json").write_text(json.dumps({"time": killed_at}))
        with trio.fail_after(DEAD_AFTER * 10 + 30):
            await procs.procs["client"].wait()
        assert procs.procs["client"].returncode == 0
        load = json.loads((tmp_path / "load.json").read_text())
        t_load = time.monotonic()
        assert load["errors"] == []
        assert load["retries"].get("SiloUnavailableError", 0) > 0  # calls were in flight

        # -- calls resumed on the survivors within the detection time
        calls = load["calls"]
        after = [c for c in calls if c[0] in on_victim and c[2] > killed_at and c[3] != victim]
        first = min(c[2] for c in after) - killed_at
        by_grain: dict[int, float] = {}
        for i, _, t, _, _ in after:
            by_grain[i] = min(by_grain.get(i, t), t)
        assert set(by_grain) == on_victim
        last = max(by_grain.values()) - killed_at
        assert first < DEAD_AFTER * 4, first
        assert last < DEAD_AFTER * 8, last
        for i, _, t, silo, _ in calls:
            if t > killed_at + 0.5:
                assert silo != victim
            if i not in on_victim:
                assert silo == warm["where"][i]

        # -- no twin activations, every acknowledged update stored, nothing else
        acked: dict[int, int] = {}
        for i, seq, *_ in calls:
            acked[i] = max(acked.get(i, 1), seq)
        states = read_states(db, "cell")
        for i in range(GRAINS):
            state = states[f"c{i}"]
            seq = acked.get(i, 1)
            assert (state["seq"], state["count"]) == (seq, seq), (i, state, seq)
            assert state["activations"] == (2 if i in on_victim else 1), (i, state)
        survivors = ("a", "c")
        entries = await directory_entries(procs, survivors)
        for i in range(LOAD_GRAINS):
            (entry,) = entries[f"cell/c{i}"]
            assert entry.silo_id in live - {victim}
            assert entry.activation_id == states[f"c{i}"]["owner"]
        # the dead silo's other entries are gone (every owner drops its own share's)
        with trio.fail_after(30):
            while any(e.silo_id == victim for es in entries.values() for e in es):
                await trio.sleep(0.2)
                entries = await directory_entries(procs, survivors)
        t_janitor = time.monotonic()
        assert len(entries) == GRAINS - sum(
            1 for i in range(LOAD_GRAINS, GRAINS) if warm["where"][i] == victim
        )
        for i in range(LOAD_GRAINS):
            assert [e.activation_id for e in entries[f"cell/c{i}"]] == [states[f"c{i}"]["owner"]]
        procs.assert_clean_logs("a", "c", "client")
        duplicates = sum(1 for c in calls if not c[4])
        print(
            f"startup+warm {t_warm - t0:.1f} s (calls {warm['seconds']:.1f} s), "
            f"load {t_load - t_warm:.1f} s, janitor done {t_janitor - t_load:.1f} s later, "
            f"{len(calls)} load calls, "
            f"first recovered {first:.2f} s, all {last:.2f} s after the kill, "
            f"retries {load['retries']}, re-run calls {duplicates}",
            file=sys.stderr,
        )


RACE_KEYS = [f"r{i}" for i in range(12)]
RACE_CALLS = 50  # from each silo, to each race grain, at once


async def test_concurrent_first_calls_from_three_silo_processes_make_one_activation(
    nats_url: str, tmp_path: Path
) -> None:
    cluster = f"p{uuid.uuid4().hex[:8]}"
    db = tmp_path / "grains.db"
    labels = ("a", "b", "c")
    settings = {lab: silo_settings(nats_url, cluster, db, tmp_path, lab) for lab in labels}
    for s in settings.values():
        s["race"] = {"keys": RACE_KEYS, "calls": RACE_CALLS}
    async with processes(tmp_path) as procs:
        silo_ids = await start_silos(procs, settings)
        # every silo starts its calls at the same wall-clock moment
        (tmp_path / "race.go").write_text(str(time.time() + 0.5))
        with trio.fail_after(30):
            reports = {
                label: json.loads(await wait_for_file(procs, tmp_path / f"race-{label}.json"))
                for label in labels
            }
        for report in reports.values():
            assert report["errors"] == []
            assert report["late_by"] < 0.25, report["late_by"]
        live = set(silo_ids.values())
        states = read_states(db, "race")
        entries = await directory_entries(procs, labels)
        for key in RACE_KEYS:
            results = [r for report in reports.values() for r in report["results"][key]]
            assert len(results) == RACE_CALLS * 3
            # one activation answered every call, each hit counted once
            assert len({activation for _, activation, _ in results}) == 1, key
            assert sorted(hits for hits, _, _ in results) == list(range(1, RACE_CALLS * 3 + 1))
            assert states[key] == {"activations": 1, "hits": RACE_CALLS * 3}
            (entry,) = entries[f"race/{key}"]
            assert entry.activation_id == results[0][1]
            assert entry.silo_id == results[0][2]
            assert entry.silo_id in live
        procs.assert_clean_logs(*labels)
        # and only one is alive in the silos (losers of the directory race left nothing)
        assert sum(r["race_activations"] for r in reports.values()) == len(RACE_KEYS)
        created = sum(r["activations_created"] for r in reports.values())
        print(
            f"race: {created - len(RACE_KEYS)} activations lost the directory race; "
            f"winners: {collections.Counter(e[0].silo_id for e in entries.values())}",
            file=sys.stderr,
        )
