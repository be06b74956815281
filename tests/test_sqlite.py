"""The built-in ``sqlite`` storage provider and reminder table: contract, durability, errors,
threading, and grains persisting through a silo restart."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import cattrs
import pytest
import trio
import trio.testing

from trio_grains import (
    ConfigError,
    Grain,
    GrainId,
    InconsistentStateError,
    ProviderContext,
    ReminderEntry,
    SiloConfig,
    StorageError,
    TickStatus,
    open_silo,
    persistent_state,
)
from trio_grains._builtin.sqlite import (
    SqliteReminderTable,
    SqliteStorage,
    open_sqlite_reminder_table,
    open_sqlite_storage,
)
from trio_grains.testing import check_grain_storage, check_reminder_table

CONTEXT = ProviderContext("default", "test-silo", "dev", cattrs.Converter())


def open_storage(path: Path | str, **options: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    return open_sqlite_storage(CONTEXT, {"path": str(path), **options})


def open_table(path: Path | str, **options: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    return open_sqlite_reminder_table(CONTEXT, {"path": str(path), **options})


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    async with open_storage(tmp_path / "grains.db") as provider:
        yield provider


GID = GrainId.create("cart", "bob")


def sqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trio-grains sqlite")]


# --- the storage contract --------------------------------------------------------------------


async def test_read_write_clear_round_trip(storage: SqliteStorage) -> None:
    assert await storage.read("cart", GID) is None
    first = await storage.write("cart", GID, b"one", None)
    record = await storage.read("cart", GID)
    assert record is not None
    assert (record.data, record.etag) == (b"one", first)

    second = await storage.write("cart", GID, b"two", first)
    assert second != first
    record = await storage.read("cart", GID)
    assert record is not None
    assert (record.data, record.etag) == (b"two", second)

    await storage.clear("cart", GID, second)
    assert await storage.read("cart", GID) is None
    # After a clear the record can be created again, with a fresh ETag.
    third = await storage.write("cart", GID, b"three", None)
    assert third not in (first, second)


async def test_stale_etags_change_nothing(storage: SqliteStorage) -> None:
    first = await storage.write("cart", GID, b"one", None)
    second = await storage.write("cart", GID, b"two", first)

    with pytest.raises(InconsistentStateError, match=repr(second)):
        await storage.write("cart", GID, b"stale", first)
    with pytest.raises(InconsistentStateError):
        await storage.write("cart", GID, b"none", None)  # None: "I expect no record"
    with pytest.raises(InconsistentStateError):
        await storage.clear("cart", GID, first)
    with pytest.raises(InconsistentStateError):
        await storage.clear("cart", GID, None)
    record = await storage.read("cart", GID)
    assert record is not None
    assert (record.data, record.etag) == (b"two", second)

    await storage.clear("cart", GID, second)
    with pytest.raises(InconsistentStateError):
        await storage.write("cart", GID, b"gone", second)  # no record any more
    with pytest.raises(InconsistentStateError):
        await storage.clear("cart", GID, second)
    await storage.clear("cart", GID, None)  # clearing nothing, expecting nothing: fine
    assert await storage.read("cart", GID) is None


async def test_an_etag_is_never_reused_after_clear(storage: SqliteStorage) -> None:
    # An integer version restarting at 1 would let a stale writer overwrite the new record.
    old = await storage.write("cart", GID, b"a", None)
    await storage.clear("cart", GID, old)
    await storage.write("cart", GID, b"b", None)
    with pytest.raises(InconsistentStateError):
        await storage.write("cart", GID, b"stale", old)


async def test_every_kind_of_key_is_its_own_record(storage: SqliteStorage) -> None:
    ids = [
        GrainId.create("cart", 42),
        GrainId.create("cart", "2a"),  # not the int 42 ("2A")
        GrainId.create("cart", uuid.UUID(int=7)),
        GrainId.create("cart", 42, "ext"),
        GrainId.create("cart", "a/b/c"),
        GrainId.create("cart", 'it\'s "quoted"'),
        GrainId.create("cart", "x'); DROP TABLE grain_state; --"),
        GrainId.create("cart", "ключ ü 😀 中文"),
        GrainId.create("cart", "%41 and spaces "),
        GrainId.create("order", "bob"),
        GrainId.create("Cart", "bob"),
        GrainId.create("cart", "bob"),
    ]
    etags = {}
    for state_name in ("cart", "cart2"):
        for n, gid in enumerate(ids):
            data = f"{state_name}|{n}|{gid}".encode()
            etags[state_name, gid] = await storage.write(state_name, gid, data, None)
    for state_name in ("cart", "cart2"):
        for n, gid in enumerate(ids):
            record = await storage.read(state_name, gid)
            assert record is not None
            assert record.data == f"{state_name}|{n}|{gid}".encode()
            assert record.etag == etags[state_name, gid]


async def test_large_states_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    big = os.urandom(5 * 1024 * 1024)
    async with open_storage(tmp_path / "big.db") as storage:
        etag = await storage.write("blob", GID, big, None)
        record = await storage.read("blob", GID)
        assert record is not None
        assert record.data == big
        etag = await storage.write("blob", GID, big[::-1], etag)
    async with open_storage(tmp_path / "big.db") as storage:
        record = await storage.read("blob", GID)
        assert record is not None
        assert record.data == big[::-1]
        assert record.etag == etag


async def test_concurrent_writers_to_distinct_grains(storage: SqliteStorage) -> None:
    async def writer(n: int) -> None:
        gid = GrainId.create("counter", n)
        etag = None
        for i in range(5):
            etag = await storage.write("count", gid, str(i).encode(), etag)

    async with trio.open_nursery() as nursery:
        for n in range(100):
            nursery.start_soon(writer, n)
    for n in range(100):
        record = await storage.read("count", GrainId.create("counter", n))
        assert record is not None
        assert record.data == b"4"
    stats = storage.statistics()
    assert stats.calls == 500 + 100
    assert stats.largest_batch >= 1
    assert stats.transactions <= stats.calls


@pytest.mark.parametrize("existing", [True, False], ids=["update", "insert"])
async def test_exactly_one_of_concurrent_same_etag_writes_wins(
    storage: SqliteStorage, existing: bool
) -> None:
    etag = await storage.write("cart", GID, b"base", None) if existing else None
    won: list[tuple[int, str]] = []
    lost: list[int] = []

    async def writer(n: int) -> None:
        try:
            won.append((n, await storage.write("cart", GID, f"w{n}".encode(), etag)))
        except InconsistentStateError:
            lost.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(writer, n)
    assert len(won) == 1
    assert len(lost) == 19
    winner, winner_etag = won[0]
    record = await storage.read("cart", GID)
    assert record is not None
    assert (record.data, record.etag) == (f"w{winner}".encode(), winner_etag)


async def test_records_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    async with open_storage(path) as storage:
        etag = await storage.write("cart", GID, b"kept", None)
        gone = GrainId.create("cart", "gone")
        await storage.clear("cart", gone, await storage.write("cart", gone, b"x", None))
    assert sqlite_threads() == []  # the thread was joined when the provider closed
    async with open_storage(path, synchronous="FULL") as storage:
        record = await storage.read("cart", GID)
        assert record is not None
        assert (record.data, record.etag) == (b"kept", etag)
        assert await storage.read("cart", GrainId.create("cart", "gone")) is None
        await storage.write("cart", GID, b"again", etag)  # the old ETag still holds
    with contextlib.closing(sqlite3.connect(path)) as raw:
        rows = raw.execute("SELECT component, version FROM trio_grains_schema").fetchall()
        assert rows == [("grain_state", 1)]
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


async def test_memory_database_works_but_forgets(tmp_path: Path) -> None:
    async with open_sqlite_storage(CONTEXT, {"path": ":memory:"}) as storage:
        etag = await storage.write("cart", GID, b"m", None)
        record = await storage.read("cart", GID)
        assert record is not None
        assert record.etag == etag
        assert storage.statistics().journal_mode == "memory"
    async with open_sqlite_storage(CONTEXT, {"path": ":memory:"}) as storage:
        assert await storage.read("cart", GID) is None


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with open_storage(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("UPDATE trio_grains_schema SET version = 99")
        raw.commit()
    with pytest.raises(StorageError, match="schema version 99"):
        async with open_storage(path):
            pass  # pragma: no cover


async def test_a_cancelled_caller_still_learns_what_was_written(storage: SqliteStorage) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await storage.write("cart", GID, b"never", None)  # cancelled before it is queued
    assert await storage.read("cart", GID) is None

    etags: list[str] = []

    async def writer() -> None:
        etags.append(await storage.write("cart", GID, b"written", None))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for the thread
        nursery.cancel_scope.cancel()
    # The write was not abandoned: the caller got its ETag before the cancellation.
    record = await storage.read("cart", GID)
    assert record is not None
    assert etags == [record.etag]
    await storage.write("cart", GID, b"next", etags[0])


async def test_calls_after_close_fail_clearly(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "closed.db") as storage:
        pass
    with pytest.raises(StorageError, match="closed"):
        await storage.read("cart", GID)


# --- options and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option 'path' is required"),
        ({"path": "g.db", "pth": 1}, "unknown option 'pth'; valid options: busy_timeout, path"),
        ({"path": ""}, "option 'path' must be a non-empty"),
        ({"path": 3}, "option 'path' must be a non-empty"),
        ({"path": "g.db", "synchronous": "OFF"}, "option 'synchronous' must be"),
        ({"path": "g.db", "synchronous": 1}, "option 'synchronous' must be"),
        ({"path": "g.db", "busy_timeout": -1}, "option 'busy_timeout' must be"),
        ({"path": "g.db", "busy_timeout": True}, "option 'busy_timeout' must be"),
    ],
)
async def test_bad_options_are_config_errors(
    options: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        async with open_sqlite_storage(CONTEXT, options):
            pass  # pragma: no cover
    with pytest.raises(ConfigError, match=r"\[reminders\]"):
        async with open_sqlite_reminder_table(CONTEXT, options):
            pass  # pragma: no cover
    assert not (tmp_path / "g.db").exists()


async def test_synchronous_is_case_insensitive(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "s.db", synchronous="full", busy_timeout=0) as storage:
        assert await storage.read("cart", GID) is None


async def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "g.db"
    with pytest.raises(ConfigError, match=r"storage\.default.*does not exist") as info:
        async with open_storage(path):
            pass  # pragma: no cover
    assert str(path) in str(info.value)


async def test_backend_errors_become_storage_errors_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "a-directory.db"
    folder.mkdir()
    with pytest.raises(StorageError, match="unable to open") as info:
        async with open_storage(folder):
            pass  # pragma: no cover
    assert str(folder) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="not a database") as info:
        async with open_storage(junk):
            pass  # pragma: no cover
    assert str(junk) in str(info.value)
    assert sqlite_threads() == []


async def test_a_locked_database_fails_calls_and_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with open_storage(path, busy_timeout=0) as storage:
        etag = await storage.write("cart", GID, b"before", None)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            with pytest.raises(StorageError, match="database is locked") as info:
                await storage.write("cart", GID, b"blocked", etag)
            assert str(path) in str(info.value)
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)

            failures: list[StorageError] = []

            async def blocked(n: int) -> None:
                try:
                    await storage.write("other", GrainId.create("cart", n), b"x", None)
                except StorageError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(blocked, n)
            assert len(failures) == 10
            record = await storage.read("cart", GID)  # WAL: readers are not blocked
            assert record is not None
            assert record.data == b"before"
            other.execute("COMMIT")
        # Nothing was written by the failed calls, and the provider works again.
        assert await storage.read("other", GrainId.create("cart", 0)) is None
        etag = await storage.write("cart", GID, b"after", etag)
        record = await storage.read("cart", GID)
        assert record is not None
        assert (record.data, record.etag) == (b"after", etag)


RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def set_read_only(path: Path, read_only: bool) -> None:
    """chmod, or (as root, whom permissions do not stop) the immutable attribute."""
    if not RUNNING_AS_ROOT:
        path.chmod(0o444 if read_only else 0o644)
        return
    flag = "+i" if read_only else "-i"
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.fixture
def read_only_switch(tmp_path: Path) -> Callable[[Path, bool], None]:
    if RUNNING_AS_ROOT:
        probe = tmp_path / "probe"
        probe.touch()
        try:
            set_read_only(probe, True)
        except (OSError, subprocess.CalledProcessError):
            pytest.skip(
                "running as root, whom file permissions do not stop from writing, and "
                "'chattr +i' (the immutable attribute) is not available here"
            )
        set_read_only(probe, False)
    return set_read_only


async def test_a_read_only_file_fails_writes_then_recovers(
    tmp_path: Path, read_only_switch: Callable[[Path, bool], None]
) -> None:
    path = tmp_path / "ro.db"
    async with open_storage(path) as storage:
        etag = await storage.write("cart", GID, b"before", None)
    read_only_switch(path, True)
    try:
        async with open_storage(path) as storage:
            record = await storage.read("cart", GID)  # a read-only file still opens and reads
            assert record is not None
            with pytest.raises(StorageError, match="readonly") as info:
                await storage.write("cart", GID, b"refused", etag)
            assert str(path) in str(info.value)
            assert storage.statistics().reconnects == 0
            read_only_switch(path, False)
            # The connection opened read-only: the provider reconnects, and the write works.
            etag = await storage.write("cart", GID, b"after", etag)
            assert storage.statistics().reconnects == 1
    finally:
        read_only_switch(path, False)
    async with open_storage(path) as storage:
        record = await storage.read("cart", GID)
        assert record is not None
        assert (record.data, record.etag) == (b"after", etag)


async def test_storage_and_reminders_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with open_storage(path) as storage, open_table(path) as table:
        await storage.write("cart", GID, b"s", None)
        await table.upsert(ReminderEntry(GID, "r", 1.0, 60.0))
        assert len(sqlite_threads()) == 2
    assert sqlite_threads() == []
    with contextlib.closing(sqlite3.connect(path)) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"grain_state", "reminders", "trio_grains_schema"} <= tables
        versions = dict(raw.execute("SELECT component, version FROM trio_grains_schema"))
        assert versions == {"grain_state": 1, "reminders": 1}


# --- the reminder table ----------------------------------------------------------------------


async def test_reminder_table_operations(tmp_path: Path) -> None:
    other = GrainId.create("cart", "a/b 'ü'")
    async with open_table(tmp_path / "r.db") as table:
        assert isinstance(table, SqliteReminderTable)
        assert await table.read_all() == []
        assert await table.read(GID, "daily") is None
        etag = await table.upsert(ReminderEntry(GID, "daily", 100.5, 86400.0, etag="ignored"))
        assert etag != "ignored"
        await table.upsert(ReminderEntry(GID, "hourly", 200.0, 3600.0))
        await table.upsert(ReminderEntry(other, "daily", 300.0, 60.0))

        assert await table.read(GID, "daily") == ReminderEntry(GID, "daily", 100.5, 86400.0, etag)
        mine = await table.read_grain(GID)
        assert sorted(r.name for r in mine) == ["daily", "hourly"]
        assert [r.grain_id for r in await table.read_grain(other)] == [other]
        assert len(await table.read_all()) == 3

        new_etag = await table.upsert(ReminderEntry(GID, "daily", 500.0, 120.0))
        assert new_etag != etag
        assert await table.read(GID, "daily") == ReminderEntry(GID, "daily", 500.0, 120.0, new_etag)
        assert len(await table.read_all()) == 3  # replaced, not added

        assert await table.remove(GID, "daily", etag) is False  # stale ETag
        assert await table.read(GID, "daily") is not None
        assert await table.remove(GID, "daily", new_etag) is True
        assert await table.remove(GID, "daily", None) is False  # already gone
        assert await table.remove(GID, "hourly", None) is True  # any ETag
        assert await table.read_grain(GID) == []
        assert [r.grain_id for r in await table.read_all()] == [other]


async def test_reminders_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with open_table(path) as table:
        etag = await table.upsert(ReminderEntry(GID, "daily", 1234.25, 86400.0))
    async with open_table(path) as table:
        assert await table.read_all() == [ReminderEntry(GID, "daily", 1234.25, 86400.0, etag)]
        assert await table.remove(GID, "daily", etag) is True
    async with open_table(path) as table:
        assert await table.read_all() == []


# --- grains through a silo -------------------------------------------------------------------


@attrs.define
class CounterState:
    count: int = 0
    history: list[str] = attrs.field(factory=list)


ACTIVATIONS: list[str] = []
TICKS: list[tuple[str, str, TickStatus]] = []
TICKED: list[trio.Event] = []  # set on every tick


class CounterGrain(Grain):
    counter = persistent_state(CounterState)

    async def on_activate(self) -> None:
        ACTIVATIONS.append(self.primary_key)

    async def add(self, note: str) -> int:
        self.counter.state.count += 1
        self.counter.state.history.append(note)
        await self.counter.write()
        return self.counter.state.count

    async def get(self) -> tuple[int, list[str]]:
        return self.counter.state.count, list(self.counter.state.history)

    async def rest(self) -> None:
        self.deactivate_on_idle()

    async def remind(self, due: float, period: float) -> float:
        reminder = await self.register_reminder("tick", due=due, period=period)
        return reminder.start_at

    async def receive_reminder(self, name: str, status: TickStatus) -> None:
        TICKS.append((self.primary_key, name, status))
        for event in TICKED:
            event.set()


@pytest.fixture(autouse=True)
def _clear_records() -> None:
    ACTIVATIONS.clear()
    TICKS.clear()
    TICKED.clear()


def sqlite_config(path: Path) -> SiloConfig:
    options = {"path": str(path)}
    return SiloConfig.from_dict(
        {
            "storage": {"default": {"provider": "sqlite", "options": options}},
            "reminders": {"provider": "sqlite", "options": options},
            # A virtual clock may jump to the next deadline while Trio waits for the database
            # thread: keep the silo's own deadlines out of reach.
            "response_timeout": 1e9,
            "collection_age": 1e9,
            "collection_quantum": 1e9,
        }
    )


async def test_grain_state_survives_deactivation_and_restart(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path / "g.db")
    async with open_silo(config, grains=[CounterGrain]) as silo:
        assert silo.provider("storage", "default").__class__ is SqliteStorage
        alice = silo.get_grain(CounterGrain, "alice")
        assert await alice.add("first") == 1
        assert await alice.add("second") == 2
        await alice.rest()
        await trio.testing.wait_all_tasks_blocked()  # the deactivation runs after the turn
        assert await alice.get() == (2, ["first", "second"])  # a new activation read it back
        assert ACTIVATIONS == ["alice", "alice"]
        await silo.get_grain(CounterGrain, "bob/😀").add("bob's")
    async with open_silo(config, grains=[CounterGrain]) as silo:
        assert await silo.get_grain(CounterGrain, "alice").add("third") == 3
        assert await silo.get_grain(CounterGrain, "alice").get() == (
            3,
            ["first", "second", "third"],
        )
        assert await silo.get_grain(CounterGrain, "bob/😀").get() == (1, ["bob's"])
        assert await silo.get_grain(CounterGrain, "carol").get() == (0, [])


async def test_reminder_registered_in_one_silo_fires_in_the_next(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Autojump cannot see threads: with a threshold of 0 the virtual clock races from
    # deadline to deadline while a call waits for the database thread (thousands of ticks
    # pile up behind one activation). 10 ms of real idleness still jumps at once here.
    autojump_clock.autojump_threshold = 0.01
    config = sqlite_config(tmp_path / "g.db")
    async with open_silo(config, grains=[CounterGrain], wall_clock=trio.current_time) as silo:
        start_at = await silo.get_grain(CounterGrain, "alice").remind(3600.0, 60.0)
    fired_in_first = len(TICKS)

    async with open_silo(config, grains=[CounterGrain], wall_clock=trio.current_time) as silo:
        # This silo never registered the reminder: it can only know it from the file.
        ticked = trio.Event()
        TICKED.append(ticked)
        with trio.fail_after(30 * 24 * 3600):
            await ticked.wait()
        key, name, status = TICKS[fired_in_first]
        assert (key, name) == ("alice", "tick")
        assert status.first_tick_time == start_at
        assert status.period == 60.0
        assert status.current_tick_time >= start_at
        reminders = await silo.provider("reminders", "default").read_all()
        assert [(r.grain_id.key, r.name, r.start_at) for r in reminders] == [
            ("alice", "tick", start_at)
        ]


# --- the conformance kit ---------------------------------------------------------------------


async def test_storage_conformance(tmp_path: Path) -> None:
    await check_grain_storage(lambda: open_storage(tmp_path / "kit.db"))


async def test_reminder_table_conformance(tmp_path: Path) -> None:
    await check_reminder_table(lambda: open_table(tmp_path / "kit.db"))


async def test_memory_database_conformance() -> None:
    await check_grain_storage(lambda: open_storage(":memory:"), durable=False)
    await check_reminder_table(lambda: open_table(":memory:"), durable=False)
