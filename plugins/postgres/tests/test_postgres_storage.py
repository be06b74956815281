"""The storage provider against a real server: ETags, keys, sizes, races, durability."""

from __future__ import annotations

import os
import uuid
from typing import Any

import cattrs
import psycopg
import pytest
import trio
from psycopg import sql
from trio_grains_postgres import open_postgres_storage
from trio_grains_postgres.testing import PostgresTestServer

from trio_grains import GrainId, InconsistentStateError, ProviderContext, StorageError, StoredState

STATE = "state"
GID = GrainId.create("cart", "bob")


async def test_missing_record_reads_none(open_storage: Any) -> None:
    async with open_storage() as storage:
        assert await storage.read(STATE, GID) is None


async def test_write_read_and_etags(open_storage: Any) -> None:
    async with open_storage() as storage:
        first = await storage.write(STATE, GID, b"v1", None)
        assert await storage.read(STATE, GID) == StoredState(b"v1", first)
        second = await storage.write(STATE, GID, b"v2", first)
        assert second != first
        assert await storage.read(STATE, GID) == StoredState(b"v2", second)


async def test_conflicts_change_nothing(open_storage: Any) -> None:
    async with open_storage() as storage:
        with pytest.raises(InconsistentStateError, match="no record"):
            await storage.write(STATE, GID, b"x", "no-such-etag")
        assert await storage.read(STATE, GID) is None

        etag = await storage.write(STATE, GID, b"v1", None)
        with pytest.raises(InconsistentStateError, match=etag):
            await storage.write(STATE, GID, b"x", None)
        newer = await storage.write(STATE, GID, b"v2", etag)
        with pytest.raises(InconsistentStateError, match=newer):
            await storage.write(STATE, GID, b"x", etag)  # stale
        with pytest.raises(InconsistentStateError):
            await storage.clear(STATE, GID, etag)  # stale
        with pytest.raises(InconsistentStateError):
            await storage.clear(STATE, GID, None)  # a record exists
        assert await storage.read(STATE, GID) == StoredState(b"v2", newer)


async def test_clear(open_storage: Any) -> None:
    async with open_storage() as storage:
        await storage.clear(STATE, GID, None)  # nothing there: fine
        etag = await storage.write(STATE, GID, b"v1", None)
        await storage.clear(STATE, GID, etag)
        assert await storage.read(STATE, GID) is None
        with pytest.raises(InconsistentStateError):
            await storage.clear(STATE, GID, etag)  # already gone
        again = await storage.write(STATE, GID, b"v2", None)  # a new record may start
        assert await storage.read(STATE, GID) == StoredState(b"v2", again)


KEYS = [
    GrainId.create("cart", 0),
    GrainId.create("cart", -1),
    GrainId.create("cart", 2**63 - 1),
    GrainId.create("cart", uuid.UUID(int=7)),
    GrainId.create("cart", 42, "eu+west"),
    GrainId.create("cart", uuid.UUID(int=8), "ext/with/slashes"),
    GrainId.create("cart", "2A"),  # the same grain as int 42's plain key form
    GrainId.create("cart", "a/b/c"),
    GrainId.create("cart", "/"),
    GrainId.create("cart", "it's \"quoted\" \\ back'slash; DROP TABLE x; --"),
    GrainId.create("cart", "ünïcödé ✓ 日本語 🎉"),
    GrainId.create("cart", "%s %(name)s {schema} $1"),
    GrainId.create("cart", " spaces "),
    GrainId.create("cart", "k" * 1024),  # the longest key (MAX_KEY_LENGTH)
    GrainId.create("Other.Type@x=y`2", "bob"),
]


async def test_every_key_kind_is_a_record_of_its_own(open_storage: Any) -> None:
    async with open_storage() as storage:
        etags = {}
        for index, gid in enumerate(KEYS):
            etags[gid] = await storage.write(STATE, gid, f"{index}".encode(), None)
        for index, gid in enumerate(KEYS):
            assert await storage.read(STATE, gid) == StoredState(f"{index}".encode(), etags[gid])
        # state names are part of the key too, with the same freedom
        for name in ("other", "ünï/'\"", STATE.upper()):
            assert await storage.read(name, KEYS[0]) is None
            await storage.write(name, KEYS[0], name.encode(), None)
            assert (await storage.read(name, KEYS[0])) is not None
        assert await storage.read(STATE, KEYS[0]) == StoredState(b"0", etags[KEYS[0]])


async def test_large_and_binary_states(open_storage: Any) -> None:
    big = os.urandom(8 * 1024 * 1024)
    binary = bytes(range(256)) * 4  # NUL bytes included
    async with open_storage() as storage:
        etag = await storage.write(STATE, GID, big, None)
        record = await storage.read(STATE, GID)
        assert record is not None
        assert record.data == big
        assert record.etag == etag
        etag = await storage.write(STATE, GID, binary, etag)
        assert await storage.read(STATE, GID) == StoredState(binary, etag)
        etag = await storage.write(STATE, GID, b"", etag)
        assert await storage.read(STATE, GID) == StoredState(b"", etag)


@pytest.mark.parametrize("start_with_record", [False, True])
async def test_exactly_one_of_n_same_etag_writers_wins(
    open_storage: Any, start_with_record: bool
) -> None:
    writers = 24
    async with open_storage(pool_size=8) as storage:
        etag = await storage.write(STATE, GID, b"v0", None) if start_with_record else None
        won: list[tuple[int, str]] = []
        lost: list[int] = []

        async def write(i: int) -> None:
            try:
                won.append((i, await storage.write(STATE, GID, f"w{i}".encode(), etag)))
            except InconsistentStateError:
                lost.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(write, i)
        assert len(won) == 1, won
        assert len(lost) == writers - 1
        winner, winner_etag = won[0]
        assert await storage.read(STATE, GID) == StoredState(f"w{winner}".encode(), winner_etag)


async def test_concurrent_writers_of_different_records_all_win(open_storage: Any) -> None:
    ids = [GrainId.create("cart", i) for i in range(100)]
    async with open_storage() as storage:
        etags: dict[GrainId, str] = {}

        async def write(gid: GrainId) -> None:
            etags[gid] = await storage.write(STATE, gid, str(gid).encode(), None)

        async with trio.open_nursery() as nursery:
            for gid in ids:
                nursery.start_soon(write, gid)
        for gid in ids:
            assert await storage.read(STATE, gid) == StoredState(str(gid).encode(), etags[gid])


async def test_records_survive_close_and_reopen(open_storage: Any) -> None:
    async with open_storage() as storage:
        etag = await storage.write(STATE, GID, b"kept", None)
    async with open_storage() as storage:
        assert await storage.read(STATE, GID) == StoredState(b"kept", etag)
        with pytest.raises(InconsistentStateError):
            await storage.write(STATE, GID, b"x", None)
    async with open_storage() as first, open_storage() as second:
        newer = await first.write(STATE, GID, b"newer", etag)
        assert await second.read(STATE, GID) == StoredState(b"newer", newer)
        with pytest.raises(InconsistentStateError):
            await second.write(STATE, GID, b"stale", etag)


async def test_backend_errors_become_storage_errors(open_storage: Any) -> None:
    async with open_storage() as storage:
        with pytest.raises(StorageError) as info:
            await storage.write("nul\x00in name", GID, b"x", None)  # PostgreSQL text has no NUL
        assert not isinstance(info.value, InconsistentStateError)
        assert isinstance(info.value.__cause__, psycopg.Error)
        assert "PostgreSQL at 127.0.0.1:" in str(info.value)
        # the provider is fine afterwards
        etag = await storage.write(STATE, GID, b"ok", None)
        assert await storage.read(STATE, GID) == StoredState(b"ok", etag)


async def test_unreachable_server_is_a_storage_error_naming_it_without_password() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dsn = f"postgresql://silo:hunter2@127.0.0.1:{port}/grains"
    context = ProviderContext("default", "silo", "dev", cattrs.Converter())
    with pytest.raises(StorageError) as info:
        async with open_postgres_storage(context, {"dsn": dsn, "connect_timeout": 2}):
            pass  # pragma: no cover
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "'grains'" in message
    assert "hunter2" not in message
    assert "server is running" in message


async def test_cancelled_calls_leave_no_connection_mid_transaction(
    open_storage: Any, postgres_dsn: str, schema: str
) -> None:
    app = f"cancel-{schema}"  # names this test's connections in pg_stat_activity
    async with open_storage(pool_size=3, dsn=f"{postgres_dsn} application_name={app}") as storage:
        data, etag = b"v0", await storage.write(STATE, GID, b"v0", None)
        cancelled = 0
        for delay in range(30):
            new = f"v{delay + 1}".encode()
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_after(n: int = delay, scope: trio.CancelScope = scope) -> None:
                        for _ in range(n):
                            await trio.lowlevel.checkpoint()
                        scope.cancel()

                    nursery.start_soon(cancel_after)
                    for i in range(3):
                        nursery.start_soon(storage.write, f"s{i}", GID, b"x" * delay, None)
                    await storage.write(STATE, GID, new, etag)
            cancelled += scope.cancelled_caught
            record = await storage.read(STATE, GID)
            assert record is not None
            assert record.data in (data, new)  # the write either happened or did not
            assert record.data == new or record.etag == etag
            data, etag = record.data, record.etag
            for i in range(3):
                await storage.clear(f"s{i}", GID, _etag(await storage.read(f"s{i}", GID)))
        assert cancelled > 0
        stats = storage.database.statistics()
        assert stats["pool_available"] == stats["pool_size"] == 3  # nothing left in use
        # A call cancelled in flight waited for its statement's outcome, so its connection
        # went back idle; only one whose statement was slow to finish (then cancelled
        # server-side) was closed, and replaced by the next operation that needed one.
        open_now = stats["connections_idle"]
        assert open_now == stats["connections_num"] - stats["connections_lost"]
        assert 1 <= open_now <= 3
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            for _ in range(100):  # the server ends the closed connections' sessions soon
                rows = conn.execute(
                    "SELECT state FROM pg_stat_activity WHERE application_name = %s", (app,)
                ).fetchall()
                if len(rows) == open_now:
                    break
                await trio.sleep(0.05)
            assert sorted(r[0] for r in rows) == ["idle"] * open_now  # none mid-statement
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "grain_state"))
            ).fetchone()
            assert count == (1,)


def _etag(record: StoredState | None) -> str | None:
    return None if record is None else record.etag


async def test_a_call_waiting_for_a_server_that_is_down_can_be_cancelled(
    own_postgres_server: PostgresTestServer, schema: str
) -> None:
    server = own_postgres_server
    context = ProviderContext("default", "silo", "dev", cattrs.Converter())
    options = {"dsn": server.dsn, "schema": schema, "connect_timeout": 60}
    async with open_postgres_storage(context, options) as storage:
        etag = await storage.write(STATE, GID, b"v1", None)
        await trio.to_thread.run_sync(server.stop)
        with trio.move_on_after(0.5) as scope:
            await storage.write(STATE, GID, b"never", etag)  # waits for a connection
        assert scope.cancelled_caught  # cancelled, not failed after 60 s
        await trio.to_thread.run_sync(server.start)
        # this write reconnects (retrying for up to connect_timeout)
        newer = await storage.write(STATE, GID, b"v2", etag)
        assert await storage.read(STATE, GID) == StoredState(b"v2", newer)


async def test_connections_the_server_closed_are_replaced_unnoticed(
    open_storage: Any, postgres_dsn: str, schema: str
) -> None:
    app = f"killed-{schema}"
    async with open_storage(pool_size=2, dsn=f"{postgres_dsn} application_name={app}") as storage:
        etag = await storage.write(STATE, GID, b"v1", None)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            ).fetchone()
            assert killed == (2,)
            # pg_terminate_backend only signals the backends: wait until they are gone, so
            # the test is about connections the server *closed* (a write racing a backend
            # that is still dying may fail, and must not be retried blindly: its outcome is
            # unknown)
            with trio.fail_after(10):
                while admin.execute(  # noqa: ASYNC110 - polls the server: no event to wait on
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
                ).fetchone() != (0,):
                    await trio.sleep(0.01)
        # no StorageError: the closed connections are found before use and replaced
        etag = await storage.write(STATE, GID, b"v2", etag)
        assert await storage.read(STATE, GID) == StoredState(b"v2", etag)
        assert storage.database.statistics()["connections_num"] > 2  # new ones were opened
