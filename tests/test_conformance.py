"""The conformance kits of ``trio_grains.testing``: the memory providers pass them, and
providers that break a rule are caught with a message naming the rule."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import attrs
import pytest
import trio
import trio.lowlevel

import trio_grains.testing
from trio_grains import (
    GrainId,
    GrainStorage,
    ReminderEntry,
    ReminderTable,
    StorageError,
    StoredState,
)
from trio_grains._builtin.memory import MemoryReminderTable, MemoryStorage
from trio_grains.testing import (
    REMINDER_CHECKS,
    REMINDER_DURABILITY_CHECKS,
    STORAGE_CHECKS,
    STORAGE_DURABILITY_CHECKS,
    ReminderTableCheck,
    StorageCheck,
    check_grain_storage,
    check_reminder_table,
)


def shared(provider: object) -> Callable[[], AbstractAsyncContextManager[object]]:
    """An opener yielding *provider* every time: a "backend" that outlives each opening."""

    @contextlib.asynccontextmanager
    async def open_provider() -> AsyncIterator[object]:
        yield provider

    return open_provider


@contextlib.asynccontextmanager
async def fresh_memory_storage() -> AsyncIterator[GrainStorage]:
    yield MemoryStorage()


@contextlib.asynccontextmanager
async def fresh_memory_table() -> AsyncIterator[ReminderTable]:
    yield MemoryReminderTable()


def test_public_api() -> None:
    assert set(trio_grains.testing.__all__) == {
        "REMINDER_CHECKS",
        "REMINDER_DURABILITY_CHECKS",
        "STORAGE_CHECKS",
        "STREAM_CHECKS",
        "StreamAdapterCheck",
        "StreamAdapterOpener",
        "check_stream_adapter",
        "STORAGE_DURABILITY_CHECKS",
        "ReminderTableCheck",
        "ReminderTableOpener",
        "StorageCheck",
        "StorageOpener",
        "check_grain_storage",
        "check_reminder_table",
        "TRANSPORT_CHECKS",
        "TransportCheck",
        "ClusterBackendOpener",
        "check_transport",
        "TestCluster",
        "open_test_cluster",
        "MEMBERSHIP_CHECKS",
        "MembershipTableCheck",
        "MembershipTableOpener",
        "check_membership_table",
        "DIRECTORY_CHECKS",
        "DirectoryCorrupter",
        "GrainDirectoryCheck",
        "GrainDirectoryOpener",
        "check_grain_directory",
    }
    assert check_grain_storage.__module__ == "trio_grains.testing"
    assert set(STORAGE_CHECKS) >= STORAGE_DURABILITY_CHECKS
    assert set(REMINDER_CHECKS) >= REMINDER_DURABILITY_CHECKS
    with pytest.raises(TypeError):
        STORAGE_CHECKS["extra"] = STORAGE_CHECKS["round_trip"]  # type: ignore[index]


# --- the memory providers pass ------------------------------------------------------------


async def test_memory_storage_passes() -> None:
    await check_grain_storage(fresh_memory_storage, durable=False)


async def test_memory_reminder_table_passes() -> None:
    await check_reminder_table(fresh_memory_table, durable=False)


async def test_a_shared_memory_storage_passes_the_durability_checks() -> None:
    # One MemoryStorage behind every opening behaves like a durable backend.
    await check_grain_storage(shared(MemoryStorage()))  # type: ignore[arg-type]


async def test_a_shared_memory_table_passes_the_durability_checks() -> None:
    await check_reminder_table(shared(MemoryReminderTable()))  # type: ignore[arg-type]


async def test_a_reused_backend_with_old_data_passes_again() -> None:
    storage, table = MemoryStorage(), MemoryReminderTable()
    for _ in range(2):
        await check_grain_storage(shared(storage))  # type: ignore[arg-type]
        await check_reminder_table(shared(table))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(STORAGE_CHECKS))
async def test_each_storage_check_alone(name: str) -> None:
    check: StorageCheck = STORAGE_CHECKS[name]
    await check(shared(MemoryStorage()))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(REMINDER_CHECKS))
async def test_each_reminder_check_alone(name: str) -> None:
    check: ReminderTableCheck = REMINDER_CHECKS[name]
    await check(shared(MemoryReminderTable()))  # type: ignore[arg-type]


async def test_a_non_durable_provider_fails_the_durability_check() -> None:
    with pytest.raises(AssertionError, match="survive closing and reopening") as info:
        await check_grain_storage(fresh_memory_storage)
    assert "'durability'" in "".join(info.value.__notes__)
    with pytest.raises(AssertionError, match="survive closing and reopening"):
        await check_reminder_table(fresh_memory_table)


# --- broken providers are caught ---------------------------------------------------------


class IgnoresEtags(MemoryStorage):
    """Writes and clears whatever the etag."""

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        current = await self.read(state_name, grain_id)
        return await super().write(state_name, grain_id, data, current.etag if current else None)

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        current = await self.read(state_name, grain_id)
        await super().clear(state_name, grain_id, current.etag if current else None)


class ConstantEtag(MemoryStorage):
    """Compares etags, but every record's etag is always "1"."""

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        await super().write(state_name, grain_id, data, etag)
        self._records[(state_name, grain_id)] = StoredState(bytes(data), "1")
        return "1"


class CaseInsensitiveKeys(MemoryStorage):
    """Keys records by the lowercased id, as a careless SQL collation would."""

    def _fold(self, gid: GrainId) -> GrainId:
        return GrainId.create(gid.type, gid.key.lower())

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        return await super().read(state_name, self._fold(grain_id))

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        return await super().write(state_name, self._fold(grain_id), data, etag)

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        await super().clear(state_name, self._fold(grain_id), etag)


class TruncatesAtNul(MemoryStorage):
    """Stores data as a C string would."""

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        return await super().write(state_name, grain_id, data.split(b"\x00")[0], etag)


class RacyCompareAndSet(MemoryStorage):
    """Checks the etag, yields, then writes: concurrent writers all win."""

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        current = await self.read(state_name, grain_id)
        if (current.etag if current else None) != etag:
            return await super().write(state_name, grain_id, data, etag)  # raises
        await trio.lowlevel.checkpoint()
        new_etag = uuid.uuid4().hex
        self._records[(state_name, grain_id)] = StoredState(bytes(data), new_etag)
        return new_etag


class ReturnsNoneForEmpty(MemoryStorage):
    """Treats an empty record as no record."""

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        record = await super().read(state_name, grain_id)
        return record if record and record.data else None


class WrongErrorType(MemoryStorage):
    """Raises a plain exception on conflicts instead of InconsistentStateError."""

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        current = await self.read(state_name, grain_id)
        if (current.etag if current else None) != etag:
            raise RuntimeError("conflict")
        return await super().write(state_name, grain_id, data, etag)


async def test_the_kit_catches_a_provider_that_ignores_etags() -> None:
    with pytest.raises(AssertionError, match="etag") as info:
        await check_grain_storage(lambda: shared(IgnoresEtags())(), durable=False)  # type: ignore[arg-type, return-value]
    message = str(info.value)
    assert "must raise InconsistentStateError; it returned" in message
    assert "(trio_grains.testing storage check " in "".join(info.value.__notes__)


@pytest.mark.parametrize(
    ("provider", "check", "message"),
    [
        (IgnoresEtags, "stale_etag_write_conflicts", "write with a stale etag must raise "),
        (IgnoresEtags, "none_etag_against_existing_record_conflicts", "etag None"),
        (IgnoresEtags, "stale_etag_clear_conflicts", "clear with a stale etag must raise"),
        (ConstantEtag, "etag_changes_on_every_write", "the etag must change on every write"),
        (CaseInsensitiveKeys, "grain_id_key_kinds", "every grain id must be a record of its own"),
        (TruncatesAtNul, "round_trip", "must round-trip nul bytes"),
        (RacyCompareAndSet, "concurrent_writers_one_record", "exactly one must succeed"),
        (ReturnsNoneForEmpty, "round_trip", "round-trip empty bytes; .* is missing"),
        (WrongErrorType, "stale_etag_write_conflicts", "it raised RuntimeError: 'conflict'"),
    ],
)
async def test_the_kit_names_the_broken_rule(
    provider: type[MemoryStorage], check: str, message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        await STORAGE_CHECKS[check](shared(provider()))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="must") as info:  # the first rule it breaks
        await check_grain_storage(shared(provider()), durable=False)  # type: ignore[arg-type]
    assert "(trio_grains.testing storage check " in "".join(info.value.__notes__)


class ForgetfulRemove(MemoryReminderTable):
    """remove ignores the etag."""

    async def remove(self, grain_id: GrainId, name: str, etag: str | None) -> bool:
        return await super().remove(grain_id, name, None)


class SameEtagUpsert(MemoryReminderTable):
    async def upsert(self, entry: ReminderEntry) -> str:
        await super().upsert(entry)
        self._rows[(entry.grain_id, entry.name)] = attrs.evolve(entry, etag="same")
        return "same"


class AppendingUpsert(MemoryReminderTable):
    """read_grain returns stale duplicates: upsert adds instead of replacing."""

    def __init__(self) -> None:
        super().__init__()
        self._history: list[ReminderEntry] = []

    async def upsert(self, entry: ReminderEntry) -> str:
        etag = await super().upsert(entry)
        self._history.append(attrs.evolve(entry, etag=etag))
        return etag

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        await trio.lowlevel.checkpoint()
        return [row for row in self._history if row.grain_id == grain_id]


class IntegerTimes(MemoryReminderTable):
    async def upsert(self, entry: ReminderEntry) -> str:
        return await super().upsert(attrs.evolve(entry, start_at=float(int(entry.start_at))))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (ForgetfulRemove, "remove with a stale etag must return False"),
        (SameEtagUpsert, "the etag must change on every upsert"),
        (AppendingUpsert, "returned 'tick' twice"),
        (IntegerTimes, "start_at 1700000000.0"),
    ],
)
async def test_the_reminder_kit_names_the_broken_rule(
    table: type[MemoryReminderTable], message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_reminder_table(shared(table()), durable=False)  # type: ignore[arg-type]


class CancelBecomesStorageError(MemoryStorage):
    """A slow backend that translates everything, even Cancelled, into StorageError."""

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        try:
            for _ in range(20):
                await trio.lowlevel.checkpoint()
            return await super().write(state_name, grain_id, data, etag)
        except BaseException as exc:
            raise StorageError("backend failed") from exc


async def test_the_kit_catches_a_provider_that_swallows_cancellation() -> None:
    with pytest.raises(AssertionError, match=r"must return or raise trio.Cancelled; it raised Sto"):
        await STORAGE_CHECKS["cancelled_write"](shared(CancelBecomesStorageError()))  # type: ignore[arg-type]
