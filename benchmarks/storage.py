"""storage: persistent-state writes per second through grains, per provider.

``ours``: grains writing their state with ``await self.box.write()`` (each write is a
compare-and-set against the ETag the grain holds), through a silo configured with the
provider. ``floor``: the same backend driven directly by its own driver in a plain loop,
with the provider's own compare-and-set statement, one write per transaction:

* ``memory``: the ``MemoryStorage`` provider's ``write`` called in a loop;
* ``sqlite``: stdlib ``sqlite3`` on the main thread, the provider's table and pragmas
  (WAL, ``synchronous=NORMAL``);
* ``postgres``: psycopg on one autocommit connection, against the same throwaway server
  (``trio_grains_postgres.testing``: loopback, fsync off).

Modes without a suffix run 100 grains writing concurrently (how an actor system writes:
many grains at once); ``-sequential`` modes run one grain writing in a loop. Ratio target
>= 0.7.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio
from _runner import Emit, Options, benchmark, best_of, log, result

from trio_grains import Grain, GrainId, SiloConfig, open_silo, persistent_state
from trio_grains._builtin.memory import MemoryStorage

PAYLOAD = b"x" * 200
GRAINS = 100
MODES = (
    "memory",
    "sqlite",
    "sqlite-sequential",
    "postgres",
    "postgres-sequential",
)


@attrs.define
class Box:
    value: int = 0
    payload: bytes = b""


class WriterGrain(Grain):
    box = persistent_state(Box)

    async def write_n(self, n: int) -> None:
        for i in range(n):
            self.box.state.value = i
            self.box.state.payload = PAYLOAD
            await self.box.write()


def _grain_writes(config: SiloConfig, grains: int, writes: int) -> Callable[[], Awaitable[float]]:
    """A timed run of *grains* grains each writing *writes* times, in one long-lived silo."""
    holder: dict[str, Any] = {}

    async def run() -> float:
        silo = holder["silo"]
        refs = [silo.get_grain(WriterGrain, i) for i in range(grains)]
        for ref in refs:
            await ref.write_n(1)  # activate and create the record outside the timing
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(ref.write_n, writes)
        return time.perf_counter() - t0

    run.holder = holder  # type: ignore[attr-defined]
    return run


async def _measure(
    opts: Options,
    mode: str,
    config: SiloConfig,
    grains: int,
    floor_writes: int,
    floor: Callable[[int], Awaitable[float]],
) -> dict[str, Any]:
    writes = max(1, floor_writes // grains)
    ours = _grain_writes(config, grains, writes)
    async with open_silo(config, grains=[WriterGrain]) as silo:
        ours.holder["silo"] = silo  # type: ignore[attr-defined]

        async def timed_floor() -> float:
            return await floor(floor_writes)

        t_ours, t_floor = await best_of(opts.rounds, ours, timed_floor, mode)
    return result(
        "storage",
        mode,
        grains * writes / t_ours,
        floor_writes / t_floor,
        unit="writes/s",
        target=">= 0.7 (ratio)",
        grains=grains,
        n=grains * writes,
    )


# --- floors ----------------------------------------------------------------------------------


def _memory_floor() -> Callable[[int], Awaitable[float]]:
    storage = MemoryStorage()
    gid = GrainId.create("bench", "floor")

    async def run(n: int) -> float:
        etag = await storage.read("box", gid)
        current = etag.etag if etag else None
        t0 = time.perf_counter()
        for _ in range(n):
            current = await storage.write("box", gid, PAYLOAD, current)
        return time.perf_counter() - t0

    return run


def _sqlite_floor(path: Path) -> Callable[[int], Awaitable[float]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS grain_state (state_name TEXT NOT NULL, grain_type TEXT "
        "NOT NULL, grain_key TEXT NOT NULL, data BLOB NOT NULL, etag TEXT NOT NULL, "
        "PRIMARY KEY (state_name, grain_type, grain_key))"
    )
    etag = uuid.uuid4().hex
    conn.execute(
        "INSERT OR REPLACE INTO grain_state VALUES ('box', 'bench', 'floor', ?, ?)",
        (PAYLOAD, etag),
    )
    state = {"etag": etag}

    async def run(n: int) -> float:
        current = state["etag"]
        t0 = time.perf_counter()
        for _ in range(n):
            new = uuid.uuid4().hex
            conn.execute("BEGIN")
            cursor = conn.execute(
                "UPDATE grain_state SET data = ?, etag = ? WHERE state_name = ? AND "
                "grain_type = ? AND grain_key = ? AND etag = ?",
                (PAYLOAD, new, "box", "bench", "floor", current),
            )
            assert cursor.rowcount == 1
            conn.execute("COMMIT")
            current = new
        state["etag"] = current
        return time.perf_counter() - t0

    return run


def _postgres_floor(dsn: str) -> Callable[[int], Awaitable[float]]:
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS bench_floor (state_name TEXT NOT NULL, grain_type TEXT "
        "NOT NULL, grain_key TEXT NOT NULL, data BYTEA NOT NULL, etag TEXT NOT NULL, "
        "PRIMARY KEY (state_name, grain_type, grain_key))"
    )
    etag = uuid.uuid4().hex
    conn.execute("DELETE FROM bench_floor")
    conn.execute(
        "INSERT INTO bench_floor VALUES ('box', 'bench', 'floor', %s, %s)", (PAYLOAD, etag)
    )
    state = {"etag": etag}

    async def run(n: int) -> float:
        current = state["etag"]
        t0 = time.perf_counter()
        for _ in range(n):
            new = uuid.uuid4().hex
            cursor = conn.execute(
                "UPDATE bench_floor SET data = %s, etag = %s WHERE state_name = %s AND "
                "grain_type = %s AND grain_key = %s AND etag = %s",
                (PAYLOAD, new, "box", "bench", "floor", current),
            )
            assert cursor.rowcount == 1
            current = new
        state["etag"] = current
        return time.perf_counter() - t0

    return run


@contextlib.contextmanager
def _postgres_server(tmp: str) -> Iterator[str | None]:
    try:
        from trio_grains_postgres.testing import PostgresUnavailable, start_test_server
    except ImportError:
        log("storage postgres: trio-grains-postgres is not installed; skipped")
        yield None
        return
    try:
        with start_test_server(tmp) as dsn:
            yield dsn
    except PostgresUnavailable as exc:
        log(f"storage postgres: skipped: {exc}")
        yield None


# --- the benchmark -----------------------------------------------------------------------------


@benchmark("storage", modes=MODES)
def storage(opts: Options, emit: Emit) -> None:
    """Persistent-state writes through grains vs the backend's driver alone."""
    n = 2_000 if opts.quick else 20_000
    n_db = 300 if opts.quick else 3_000

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="trio-grains-bench-") as tmp:
            if opts.wants("memory"):
                log("storage memory ...")
                emit(await _measure(opts, "memory", SiloConfig(), GRAINS, n, _memory_floor()))
            sqlite_config = SiloConfig.from_dict(
                {"storage": {"default": {"provider": "sqlite", "options": {"path": f"{tmp}/g.db"}}}}
            )
            floor = _sqlite_floor(Path(tmp) / "floor.db")
            for mode, grains in (("sqlite", GRAINS), ("sqlite-sequential", 1)):
                if opts.wants(mode):
                    log(f"storage {mode} ...")
                    emit(await _measure(opts, mode, sqlite_config, grains, n_db, floor))
            if not (opts.wants("postgres") or opts.wants("postgres-sequential")):
                return
            with _postgres_server(tmp) as dsn:
                if dsn is None:
                    return
                pg_config = SiloConfig.from_dict(
                    {
                        "storage": {
                            "default": {
                                "provider": "postgres",
                                "options": {"dsn": dsn, "pool_size": 8},
                            }
                        }
                    }
                )
                pg_floor = _postgres_floor(dsn)
                for mode, grains in (("postgres", GRAINS), ("postgres-sequential", 1)):
                    if opts.wants(mode):
                        log(f"storage {mode} ...")
                        emit(await _measure(opts, mode, pg_config, grains, n_db, pg_floor))

    trio.run(main)
