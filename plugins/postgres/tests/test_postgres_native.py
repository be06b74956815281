"""The Trio-native connection (libpq's non-blocking API through psycopg.pq), directly."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import psycopg
import pytest
import trio
from trio_grains_postgres._native import TrioPgConnection, _with_addresses
from trio_grains_postgres._values import Statement
from trio_grains_postgres.testing import PostgresTestServer


@pytest.fixture
async def conn(postgres_dsn: str) -> AsyncIterator[TrioPgConnection]:
    connection = await TrioPgConnection.connect(postgres_dsn)
    try:
        yield connection
    finally:
        connection.close()


async def test_values_round_trip_exactly(conn: TrioPgConnection) -> None:
    binary = bytes(range(256)) * 3
    text = "ünïcödé ✓ 日本語 🎉 'quoted' $1 %s"
    floats = [0.1, 1 / 3, 1e308, -2.5e-310, math.inf, 1_700_000_000.123456]
    result = await conn.execute(
        b"SELECT $1::text, $2::bytea, $3::float8, $4::float8, $5::float8, $6::float8,"
        b" $7::float8, $8::float8, $9::int8, $10::int4, NULL::text, true, ''::bytea",
        [text, binary, *floats, -(2**63), 7],
    )
    assert result.rowcount == 1
    assert result.rows == [(text, binary, *floats, -(2**63), 7, None, True, b"")]
    nan = (await conn.execute(b"SELECT 'NaN'::float8")).rows[0][0]
    assert math.isnan(nan)


async def test_rows_and_rowcounts(conn: TrioPgConnection) -> None:
    await conn.execute(b"CREATE TEMP TABLE t (k int PRIMARY KEY, v text)")
    insert = Statement(b"t_insert", b"INSERT INTO t VALUES ($1, $2) ON CONFLICT DO NOTHING")
    assert (await conn.execute(insert, [1, "a"])).rowcount == 1
    assert (await conn.execute(insert, [1, "b"])).rowcount == 0  # prepared: runs by name
    assert (await conn.execute(insert, [2, None])).rowcount == 1
    result = await conn.execute(b"SELECT k, v FROM t ORDER BY k")
    assert (result.rows, result.rowcount) == ([(1, "a"), (2, None)], 2)
    assert (await conn.execute(b"UPDATE t SET v = 'c'")).rowcount == 2
    assert (await conn.execute(b"SELECT 1 WHERE false")).rows == []


async def test_errors_are_psycopg_classes_and_the_connection_survives(
    conn: TrioPgConnection,
) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable) as info:
        await conn.execute(b"SELECT * FROM no_such_table")
    assert info.value.diag.sqlstate == "42P01"
    with pytest.raises(psycopg.errors.UndefinedTable):  # a statement that fails to prepare
        await conn.execute(Statement(b"bad", b"SELECT * FROM no_such_table"))
    with pytest.raises(psycopg.DataError):  # a NUL is refused by the server, not truncated
        await conn.execute(b"SELECT $1::text", ["a\x00b"])
    assert conn.reusable
    assert (await conn.execute(b"SELECT 1")).rows == [(1,)]


async def test_a_call_cancelled_in_flight_returns_its_result(conn: TrioPgConnection) -> None:
    """The statement's outcome is waited for (briefly), and the connection stays usable."""
    result = None
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_soon, scope)
            result = await conn.execute(b"SELECT pg_sleep(0.01), 42")
            await trio.lowlevel.checkpoint()  # the caller's next checkpoint: Cancelled
            pytest.fail("not cancelled")  # pragma: no cover
    assert scope.cancelled_caught
    assert result is not None
    assert result.rows[0][1] == 42
    assert conn.reusable
    assert (await conn.execute(b"SELECT 2")).rows == [(2,)]


async def test_a_slow_statement_is_cancelled_on_the_server_too(
    conn: TrioPgConnection, postgres_dsn: str
) -> None:
    pid = conn.backend_pid
    with trio.fail_after(5):  # prompt, although the statement would take 60 s
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_soon, scope)
                await conn.execute(b"SELECT pg_sleep(60)")
    assert scope.cancelled_caught
    assert conn.closed  # sent a cancel request: never reused
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        for _ in range(100):
            row = admin.execute(
                "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if row is None:
                break
            await trio.sleep(0.05)
        assert row is None  # the session ended; pg_sleep did not run on


async def _cancel_soon(scope: trio.CancelScope) -> None:
    for _ in range(3):
        await trio.lowlevel.checkpoint()
    scope.cancel()


async def test_cancelled_while_connecting_closes_the_socket(postgres_dsn: str) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await TrioPgConnection.connect(postgres_dsn)
    assert scope.cancelled_caught


async def test_connect_failures_are_operational_errors(
    own_postgres_server: PostgresTestServer,
) -> None:
    server = own_postgres_server
    await trio.to_thread.run_sync(server.stop)
    with pytest.raises(psycopg.OperationalError, match="connection failed"):
        await TrioPgConnection.connect(server.dsn)
    with pytest.raises(psycopg.OperationalError, match="could not resolve host"):
        await TrioPgConnection.connect("host=no-such-host.invalid dbname=x")


async def test_host_names_are_resolved_by_trio(postgres_server: PostgresTestServer) -> None:
    dsn = f"host=localhost,127.0.0.1 port={postgres_server.port} user={postgres_server.user}"
    resolved = await _with_addresses(dsn)
    assert "hostaddr=" in resolved
    assert "localhost" in resolved
    conn = await TrioPgConnection.connect(dsn + " dbname=postgres")
    try:
        assert (await conn.execute(b"SELECT 1")).rows == [(1,)]
    finally:
        conn.close()
    unchanged = f"host=127.0.0.1 port={postgres_server.port}"
    assert await _with_addresses(unchanged) == unchanged  # nothing to look up


async def test_an_idle_connection_the_server_ended_is_not_usable(
    conn: TrioPgConnection, postgres_dsn: str
) -> None:
    assert conn.is_usable()
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.backend_pid,))
    for _ in range(500):  # the server ends the session soon after
        if not conn.is_usable():
            break
        await trio.sleep(0.01)
    assert conn.closed
