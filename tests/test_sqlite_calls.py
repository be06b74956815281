"""How the sqlite providers run calls: short ones on the Trio thread (alone, or gathered into
one transaction), the rest in the connection's thread; another connection's lock, WAL
checkpoints, cancellation and closing while calls gather."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cattrs
import pytest
import trio
import trio.testing

from trio_grains import GrainId, ProviderContext, ReminderEntry, StorageError
from trio_grains._builtin.sqlite import (
    SqliteStorage,
    open_sqlite_reminder_table,
    open_sqlite_storage,
)
from trio_grains._builtin.sqlite._connection import INLINE_MAX_BYTES

CONTEXT = ProviderContext("default", "test-silo", "dev", cattrs.Converter())
GID = GrainId.create("cart", "bob")


def open_storage(path: Path | str, **options: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    return open_sqlite_storage(CONTEXT, {"path": str(path), **options})


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    async with open_storage(tmp_path / "grains.db") as provider:
        yield provider


async def test_a_lone_writer_runs_on_the_trio_thread(storage: SqliteStorage) -> None:
    # The first write of a new WAL flushes its header to disk: that one runs in the thread.
    etag = await storage.write("cart", GID, b"0", None)
    assert storage.statistics().inline_calls == 0
    for n in range(1, 10):
        etag = await storage.write("cart", GID, str(n).encode(), etag)
    record = await storage.read("cart", GID)
    assert record is not None
    assert (record.data, record.etag) == (b"9", etag)
    stats = storage.statistics()
    assert (stats.calls, stats.inline_calls, stats.transactions) == (11, 10, 11)


async def test_concurrent_calls_share_one_transaction_on_the_trio_thread(
    storage: SqliteStorage,
) -> None:
    await storage.write("cart", GID, b"first", None)  # in the thread (see above)
    before = storage.statistics()
    etags: dict[int, str] = {}

    async def writer(n: int) -> None:
        etags[n] = await storage.write("cart", GrainId.create("cart", n), b"w", None)

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(writer, n)
    stats = storage.statistics()
    assert stats.largest_batch == 10
    assert stats.transactions == before.transactions + 1
    assert stats.inline_calls == before.inline_calls + 10
    for n, etag in etags.items():
        record = await storage.read("cart", GrainId.create("cart", n))
        assert record is not None
        assert record.etag == etag


async def test_a_stale_etag_fails_only_its_own_call_in_a_shared_transaction(
    storage: SqliteStorage,
) -> None:
    etag = await storage.write("cart", GID, b"base", None)
    results: dict[int, object] = {}

    async def writer(n: int) -> None:
        try:
            results[n] = await storage.write("cart", GID, f"w{n}".encode(), etag)
        except Exception as exc:
            results[n] = exc

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(writer, n)
    won = [n for n, result in results.items() if isinstance(result, str)]
    assert len(won) == 1
    record = await storage.read("cart", GID)
    assert record is not None
    assert (record.data, record.etag) == (f"w{won[0]}".encode(), results[won[0]])
    assert storage.statistics().largest_batch == 5


async def test_a_lock_held_by_another_connection_is_waited_for_in_the_thread(
    tmp_path: Path,
) -> None:
    # On the Trio thread a call does not wait for another connection's write lock: it runs
    # again in the connection's thread, which waits (busy_timeout) while the loop goes on.
    # Here only the Trio loop releases the lock, so a call that waited on the Trio thread
    # would never see it released (the holder gives up after a minute and says so).
    path = tmp_path / "busy.db"
    async with open_storage(path, busy_timeout=600) as storage:
        etag = await storage.write("cart", GID, b"one", None)
        etag = await storage.write("cart", GID, b"two", etag)
        before = storage.statistics()
        assert before.inline_calls == 1
        locked, release = threading.Event(), threading.Event()
        gave_up: list[bool] = []

        def hold_the_write_lock() -> None:
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
                other.execute("BEGIN IMMEDIATE")
                locked.set()
                gave_up.append(not release.wait(60))
                other.execute("COMMIT")

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        try:
            await trio.to_thread.run_sync(locked.wait)
            written: list[str] = []

            async def write() -> None:
                written.append(await storage.write("cart", GID, b"three", etag))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await trio.testing.wait_all_tasks_blocked()
                assert written == []  # waiting in the thread for the lock
                release.set()
        finally:
            release.set()
            await trio.to_thread.run_sync(holder.join)
        assert gave_up == [False]
        record = await storage.read("cart", GID)
        assert record is not None
        assert (record.data, record.etag) == (b"three", written[0])
        stats = storage.statistics()
        assert stats.inline_calls == before.inline_calls + 1  # the read, not the write
        assert stats.transactions == before.transactions + 3  # tried here, then there; read
        assert stats.reconnects == 0


async def test_full_synchronous_commits_only_in_the_thread(tmp_path: Path) -> None:
    # With synchronous=FULL every commit waits for the disk: never on the Trio thread.
    async with open_storage(tmp_path / "full.db", synchronous="FULL") as storage:
        etag = None
        for n in range(5):
            etag = await storage.write("cart", GID, str(n).encode(), etag)
        assert await storage.read("cart", GID) is not None
        assert storage.statistics().inline_calls == 0


async def test_memory_databases_run_on_the_trio_thread() -> None:
    async with open_storage(":memory:") as storage:
        etag = await storage.write("cart", GID, b"a", None)
        etag = await storage.write("cart", GID, b"b", etag)
        assert await storage.read("cart", GID) is not None
        assert storage.statistics().inline_calls == 2


async def test_large_writes_and_scans_run_in_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    async with open_storage(path) as storage:
        etag = await storage.write("cart", GID, b"small", None)
        etag = await storage.write("cart", GID, b"small", etag)
        assert storage.statistics().inline_calls == 1
        big = b"x" * (INLINE_MAX_BYTES + 1)
        etag = await storage.write("cart", GID, big, etag)
        assert storage.statistics().inline_calls == 1
        record = await storage.read("cart", GID)
        assert record is not None
        assert (record.data, record.etag) == (big, etag)
    async with open_sqlite_reminder_table(CONTEXT, {"path": str(path)}) as table:
        await table.upsert(ReminderEntry(GID, "r", 1.0, 60.0))  # the first write: thread
        await table.upsert(ReminderEntry(GID, "r", 2.0, 60.0))
        assert table.statistics().inline_calls == 1
        assert [r.start_at for r in await table.read_all()] == [2.0]  # a scan: thread
        assert table.statistics().inline_calls == 1
        entry = await table.read(GID, "r")
        assert entry is not None
        assert entry.start_at == 2.0
        assert table.statistics().inline_calls == 2


async def test_checkpoints_run_in_the_thread_and_keep_the_wal_bounded(tmp_path: Path) -> None:
    # Automatic checkpoints are off on a connection the Trio thread uses (a checkpoint
    # flushes the disk); the thread runs them instead, every 1000 pages or so.
    path = tmp_path / "wal.db"
    state = b"c" * 32 * 1024  # about 10 pages a write
    writes = 400
    async with open_storage(path) as storage:
        etag = await storage.write("cart", GID, state, None)
        for _ in range(writes):
            etag = await storage.write("cart", GID, state, etag)
        stats = storage.statistics()
        assert stats.checkpoints >= 2
        assert stats.inline_calls > writes // 2
        wal = wal_size(path)
        assert wal is not None
        assert wal < writes * len(state) // 2  # not every write's pages
    assert wal_size(path) is None  # closing the last connection checkpoints, removes it
    async with open_storage(path) as storage:
        record = await storage.read("cart", GID)
        assert record is not None
        assert (record.data, record.etag) == (state, etag)


def wal_size(path: Path) -> int | None:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else None


@pytest.mark.parametrize("attempt", range(8))
async def test_a_cancelled_call_either_happened_and_answered_or_never_started(
    storage: SqliteStorage, attempt: int
) -> None:
    # Trio runs the tasks of a batch in random order: the cancellation lands before some
    # writers started, and while others gather behind a leader.
    await storage.write("cart", GID, b"warm", None)
    etags: dict[int, str] = {}
    cancelled: set[int] = set()

    async def writer(n: int) -> None:
        try:
            etags[n] = await storage.write("cart", GrainId.create("cart", n), b"w", None)
        except trio.Cancelled:
            cancelled.add(n)
            raise

    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(writer, n)
        nursery.start_soon(lambda: _cancel(nursery.cancel_scope))
    assert etags.keys() | cancelled == set(range(6))
    assert not etags.keys() & cancelled
    for n in range(6):
        record = await storage.read("cart", GrainId.create("cart", n))
        if n in etags:
            assert record is not None
            assert record.etag == etags[n]
        else:
            assert record is None
    etag = next(iter(etags.values()), None)
    if etag is not None:  # the next write with the ETag the caller learned works
        n = next(iter(etags))
        await storage.write("cart", GrainId.create("cart", n), b"again", etag)


async def _cancel(scope: trio.CancelScope) -> None:
    scope.cancel()


@pytest.mark.parametrize("attempt", range(8))
async def test_closing_while_calls_gather_answers_every_call(tmp_path: Path, attempt: int) -> None:
    path = tmp_path / "closing.db"
    answers: dict[int, object] = {}

    async def writer(storage: SqliteStorage, n: int) -> None:
        try:
            answers[n] = await storage.write("cart", GrainId.create("cart", n), b"w", None)
        except StorageError as exc:
            answers[n] = exc

    async with trio.open_nursery() as nursery, open_storage(path) as storage:
        await storage.write("cart", GID, b"warm", None)
        for n in range(6):
            nursery.start_soon(writer, storage, n)
        # The writers run in the next batch, in random order with this task's close.
        await trio.lowlevel.cancel_shielded_checkpoint()
    assert set(answers) == set(range(6))
    async with open_storage(path) as storage:
        for n, answer in answers.items():
            record = await storage.read("cart", GrainId.create("cart", n))
            if isinstance(answer, str):
                assert record is not None
                assert record.etag == answer
            else:
                assert "closed" in str(answer)
                assert record is None
