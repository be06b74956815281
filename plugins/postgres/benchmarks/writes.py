"""Writes per second: the storage provider from Trio vs. psycopg alone, same statements.

    .venv/bin/python plugins/postgres/benchmarks/writes.py [--dsn DSN] [--seconds 3]

Without ``--dsn`` it starts a throwaway server (trio_grains_postgres.testing: loopback,
fsync off, so the numbers measure the client side, not the disk). Every write is the
provider's compare-and-set ``UPDATE ... WHERE <key> AND etag = $6`` on its own row.

* ``psycopg, 1 connection``: a plain loop on one autocommit connection (psycopg's sync
  API, which prepares the statement after 5 runs): the floor.
* ``psycopg, N threads``: N threads, a connection each.
* ``native connection, 1 task``: the provider's ``TrioPgConnection`` alone, no pool, the
  provider's prepared statement: what the provider costs on top of the connection.
* ``provider, 1 task`` / ``provider, N tasks``: ``await storage.write(...)`` from Trio
  tasks through the provider (a pool of ``pool_size`` Trio-native connections).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import cattrs
import psycopg
import trio
from psycopg import sql
from trio_grains_postgres import open_postgres_storage
from trio_grains_postgres._native import TrioPgConnection
from trio_grains_postgres._values import Statement
from trio_grains_postgres.testing import start_test_server

from trio_grains import GrainId, ProviderContext

SCHEMA = "bench_writes"
STATE = "bench"


def _update(schema: str) -> sql.Composed:
    return sql.SQL(
        "UPDATE {} SET data = %s, etag = %s WHERE state_name = %s AND grain_type = %s "
        "AND grain_key = %s AND etag = %s"
    ).format(sql.Identifier(schema, "grain_state"))


def raw_loop(dsn: str, key: str, seconds: float, counts: list[int]) -> None:
    """Write one row as fast as one connection can, with the provider's statement."""
    update = _update(SCHEMA)
    insert = sql.SQL(
        "INSERT INTO {} (state_name, grain_type, grain_key, data, etag) "
        "VALUES (%s, 'bench', %s, %s, %s) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(SCHEMA, "grain_state"))
    payload = b"x" * 100
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE grain_key = %s").format(
                sql.Identifier(SCHEMA, "grain_state")
            ),
            (key,),
        )
        etag = uuid.uuid4().hex
        conn.execute(insert, (STATE, key, payload, etag))
        n = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            new = uuid.uuid4().hex
            cur = conn.execute(update, (payload, new, STATE, "bench", key, etag))
            assert cur.rowcount == 1
            etag = new
            n += 1
    counts.append(n)


def raw(dsn: str, threads: int, seconds: float) -> float:
    counts: list[int] = []
    workers = [
        threading.Thread(target=raw_loop, args=(dsn, f"raw-{threads}-{i}", seconds, counts))
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


async def native(dsn: str, seconds: float) -> float:
    """The provider's connection alone: one task, one connection, the same statement."""
    table = sql.Identifier(SCHEMA, "grain_state")
    update = Statement(
        b"bench_update",
        sql.SQL(
            "UPDATE {} SET data = $4, etag = $5 WHERE state_name = $1 AND grain_type = $2 "
            "AND grain_key = $3 AND etag = $6"
        )
        .format(table)
        .as_bytes(),
    )
    key = (STATE, "bench", f"native-{uuid.uuid4().hex}")
    payload = b"x" * 100
    conn = await TrioPgConnection.connect(dsn)
    try:
        etag = uuid.uuid4().hex
        insert = sql.SQL(
            "INSERT INTO {} (state_name, grain_type, grain_key, data, etag) "
            "VALUES ($1, $2, $3, $4, $5)"
        ).format(table)
        await conn.execute(insert.as_bytes(), (*key, payload, etag))
        n = 0
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            new = uuid.uuid4().hex
            result = await conn.execute(update, (*key, payload, new, etag))
            assert result.rowcount == 1
            etag = new
            n += 1
    finally:
        conn.close()
    return n / seconds


async def provider(dsn: str, tasks: int, pool_size: int, seconds: float) -> float:
    context = ProviderContext("bench", "bench", "bench", cattrs.Converter())
    options = {"dsn": dsn, "schema": SCHEMA, "pool_size": pool_size}
    payload = b"x" * 100
    async with open_postgres_storage(context, options) as storage:
        counts: list[int] = []

        async def loop(i: int) -> None:
            gid = GrainId.create("bench", f"provider-{tasks}-{pool_size}-{i}-{uuid.uuid4().hex}")
            etag = await storage.write(STATE, gid, payload, None)
            n = 0
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                etag = await storage.write(STATE, gid, payload, etag)
                n += 1
            counts.append(n)

        async with trio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(loop, i)
    return sum(counts) / seconds


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    with tempfile.TemporaryDirectory() as tmp, start_test_server(tmp) as test_dsn:
        yield test_dsn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="an existing server (default: start a throwaway one)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    with server(args.dsn) as dsn:
        trio.run(provider, dsn, 1, 1, 0.2)  # creates the schema, warms up
        rows = [
            ("psycopg, 1 connection", raw(dsn, 1, args.seconds)),
            ("native connection, 1 task (no pool)", trio.run(native, dsn, args.seconds)),
            ("provider, 1 task (pool_size 4)", trio.run(provider, dsn, 1, 4, args.seconds)),
            ("psycopg, 4 threads x 1 connection", raw(dsn, 4, args.seconds)),
            ("provider, 4 tasks (pool_size 4)", trio.run(provider, dsn, 4, 4, args.seconds)),
            ("provider, 16 tasks (pool_size 4)", trio.run(provider, dsn, 16, 4, args.seconds)),
            ("provider, 16 tasks (pool_size 8)", trio.run(provider, dsn, 16, 8, args.seconds)),
        ]
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  writes/s")
    for name, rate in rows:
        print(f"{name:{width}}  {rate:8.0f}")


if __name__ == "__main__":
    main()
