"""Decoders of rows from shared tables fail only with their documented error, whatever the
bytes: arbitrary bytes, deep nesting, near-valid rows with wrong types, huge strings.

Each property decodes a hostile value and accepts exactly two outcomes: a value of the
decoder's type, or the decoder's documented exception. Anything else (``RecursionError``,
``AttributeError``, ``OverflowError``...) is what used to stop every silo of a cluster.
The tables' skip-and-count behaviour (``malformed_rows``, one log record per bad row) is
checked at the end, on the sqlite table and the reminder service.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import cattrs
import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_grains import (
    DirectoryError,
    GrainId,
    MembershipError,
    ProviderContext,
    ReminderEntry,
    SerializationError,
    StorageError,
)
from trio_grains._builtin.sqlite import open_sqlite_reminder_table
from trio_grains._builtin.sqlite._reminders import decode_reminder_row as sqlite_reminder_row
from trio_grains._builtin.sqlite._storage import decode_record
from trio_grains._cluster.directory import DirectoryEntry
from trio_grains._cluster.silo_entries import SiloEntry, SiloStatus
from trio_grains._reminders import ReminderService, ReminderTable, checked_reminder_row
from trio_grains._rows import MAX_ROW_BYTES, MalformedRows, load_json_object
from trio_grains._serialization import Codec, make_converter

nats_membership = pytest.importorskip("trio_grains_nats.membership")
nats_directory = pytest.importorskip("trio_grains_nats.directory")
nats_reminders = pytest.importorskip("trio_grains_nats.reminders")

FUZZ = settings(
    max_examples=150,
    deadline=None,  # deep nesting takes the parser a few ms
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- hostile values ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth  # unterminated


deep_json = st.builds(
    _nested,
    st.integers(min_value=1, max_value=200_000),
    st.sampled_from(["list", "object", "open"]),
)
huge_text = st.integers(min_value=MAX_ROW_BYTES - 100, max_value=MAX_ROW_BYTES * 3).map(
    lambda n: "x" * n
)
field_values = json_values | huge_text | deep_json.map(lambda b: b.decode())


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, separators=(",", ":")).encode()


def mutated(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """*valid* with fields replaced, removed or added (any JSON, huge strings), as JSON;
    or a deeply nested value in place of one field (built as text, as no encoder could)."""
    replaced = st.dictionaries(st.sampled_from(sorted(valid)), field_values, min_size=1).map(
        lambda changes: _dumps({**valid, **changes})
    )
    removed = st.sets(st.sampled_from(sorted(valid)), min_size=1).map(
        lambda gone: _dumps({k: v for k, v in valid.items() if k not in gone})
    )
    nested = st.tuples(st.sampled_from(sorted(valid)), deep_json).map(
        lambda pair: _dumps({**valid, pair[0]: None}).replace(
            f'"{pair[0]}":null'.encode(), f'"{pair[0]}":'.encode() + pair[1]
        )
    )
    return replaced | removed | nested


hostile_bytes = st.binary(max_size=2000) | deep_json | st.builds(_dumps, json_values)


def outcome(decode: Callable[[], Any], error: type[Exception], result: type) -> None:
    """*decode()* returns a *result* or raises *error*; nothing else."""
    try:
        value = decode()
    except error:
        return
    assert isinstance(value, result)


# --- the JSON loader --------------------------------------------------------------------------


@FUZZ
@given(hostile_bytes | st.builds(lambda t: _dumps(t), huge_text))
def test_load_json_object_raises_only_value_error(data: bytes) -> None:
    outcome(lambda: load_json_object(data), ValueError, dict)


@pytest.mark.parametrize(
    "data",
    [b"[" * 30_000, b'{"a":' * 12_000, b"NaN", b'{"a":Infinity}', b"\xff", b"1" * 5000],
)
def test_load_json_object_refuses_depth_constants_and_bad_text(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"nested too deeply|not JSON|not a number"):
        load_json_object(data)


def test_load_json_object_refuses_a_row_too_large_before_parsing() -> None:
    with pytest.raises(ValueError, match="more than the 65536"):
        load_json_object(b"{" + b" " * MAX_ROW_BYTES + b"}")


# --- membership rows --------------------------------------------------------------------------

SILO = SiloEntry(
    "silo-1",
    "grains.c1.silo.silo-1",
    SiloStatus.ACTIVE,
    roles=frozenset({"web"}),
    started_at=1.5,
    heartbeat_at=2.5,
    grain_types=frozenset({"cart"}),
    load=3,
)
SILO_KEY = nats_membership.encode_silo_key(SILO.silo_id)
SILO_ROW = json.loads(nats_membership.encode_silo_row(SILO))


def test_a_silo_row_round_trips() -> None:
    data = nats_membership.encode_silo_row(SILO)
    assert nats_membership.decode_silo_row(SILO_KEY, data, 7) == attrs.evolve(SILO, version=7)


@FUZZ
@given(hostile_bytes | mutated(SILO_ROW))
def test_silo_rows_raise_only_membership_error(data: bytes) -> None:
    outcome(lambda: nats_membership.decode_silo_row(SILO_KEY, data, 1), MembershipError, SiloEntry)


@FUZZ
@given(st.text(max_size=40), mutated(SILO_ROW) | st.just(_dumps(SILO_ROW)))
def test_silo_rows_under_any_key_raise_only_membership_error(key: str, data: bytes) -> None:
    outcome(lambda: nats_membership.decode_silo_row(key, data, 1), MembershipError, SiloEntry)


@pytest.mark.parametrize(
    "change",
    [
        {"silo_id": "silo-2"},  # a row under another silo's key
        {"load": True},
        {"load": -1},
        {"load": 1.0},
        {"started_at": "1.5"},
        {"heartbeat_at": None},
        {"roles": "web"},
        {"roles": [1]},
        {"status": "alive"},
        {"address": "a b"},
        {"address": "grains.x\r\nPUB evil"},
        {"grain_types": [["nested"]]},
    ],
)
def test_a_silo_row_with_a_wrong_field_is_malformed(change: dict[str, Any]) -> None:
    with pytest.raises(MembershipError, match="malformed membership row"):
        nats_membership.decode_silo_row(SILO_KEY, _dumps({**SILO_ROW, **change}), 1)


def test_a_silo_row_too_large_to_read_back_is_not_written() -> None:
    fat = attrs.evolve(SILO, grain_types=frozenset(f"type{i:06}" for i in range(10_000)))
    with pytest.raises(MembershipError, match="could not be read back"):
        nats_membership.encode_silo_row(fat)


# --- directory entries ------------------------------------------------------------------------

GRAIN = GrainId.create("cart", "bob/1")
DIR_KEY = GRAIN.token
DIR_ROW = {"grain": str(GRAIN), "silo": "silo-1", "activation": "a" * 32}


def test_a_directory_entry_round_trips() -> None:
    entry = nats_directory.decode_directory_entry(DIR_KEY, _dumps(DIR_ROW), 4)
    assert entry == DirectoryEntry(GRAIN, "silo-1", "a" * 32, 4)


@FUZZ
@given(hostile_bytes | mutated(DIR_ROW))
def test_directory_entries_raise_only_directory_error(data: bytes) -> None:
    outcome(
        lambda: nats_directory.decode_directory_entry(DIR_KEY, data, 1),
        DirectoryError,
        DirectoryEntry,
    )


def test_a_directory_entry_under_another_grains_key_is_malformed() -> None:
    other = GrainId.create("cart", "eve").token
    with pytest.raises(DirectoryError, match="unreadable directory entry"):
        nats_directory.decode_directory_entry(other, _dumps(DIR_ROW), 1)


# --- reminder rows ----------------------------------------------------------------------------

REMINDER_KEY = nats_reminders.reminder_key(GRAIN, "tick")
REMINDER_ROW = {"start_at": 1_700_000_000.25, "period": 60.0}


def test_a_nats_reminder_row_round_trips() -> None:
    row = nats_reminders.decode_reminder_row(REMINDER_KEY, _dumps(REMINDER_ROW), 9)
    assert row == ReminderEntry(GRAIN, "tick", 1_700_000_000.25, 60.0, "9")


@FUZZ
@given(st.text(max_size=60) | st.just(REMINDER_KEY), hostile_bytes | mutated(REMINDER_ROW))
def test_nats_reminder_rows_raise_only_storage_error(key: str, data: bytes) -> None:
    outcome(lambda: nats_reminders.decode_reminder_row(key, data, 1), StorageError, ReminderEntry)


@pytest.mark.parametrize(
    "row",
    [{"start_at": 1, "period": 0}, {"start_at": 1, "period": -5}, {"start_at": 1e300, "period": 1}],
)
def test_a_reminder_row_that_would_break_the_schedule_is_malformed(row: dict[str, Any]) -> None:
    with pytest.raises(StorageError, match="malformed reminder row"):
        nats_reminders.decode_reminder_row(REMINDER_KEY, _dumps(row), 1)


row_fields = st.tuples(
    json_values | st.binary(max_size=20),  # grain_type
    json_values | st.binary(max_size=20),  # grain_key
    json_values | st.binary(max_size=20),  # name
    scalars | st.binary(max_size=20),  # start_at
    scalars | st.binary(max_size=20),  # period
    scalars | st.binary(max_size=20),  # etag
)
good_row = st.tuples(
    st.just("cart"), st.text(min_size=1, max_size=10), st.text(min_size=1, max_size=10),
    st.floats(), st.floats(), st.text(max_size=10) | st.none(),
)  # fmt: skip


@FUZZ
@given(row_fields | good_row | st.lists(scalars, max_size=8).map(tuple))
def test_sql_reminder_rows_raise_only_storage_error(row: tuple[Any, ...]) -> None:
    outcome(lambda: sqlite_reminder_row(row), StorageError, ReminderEntry)
    postgres = pytest.importorskip("trio_grains_postgres._reminders")
    outcome(lambda: postgres.decode_reminder_row(row), StorageError, ReminderEntry)


@FUZZ
@given(
    st.builds(
        ReminderEntry,
        st.just(GRAIN) | scalars,
        scalars,
        scalars,
        scalars,
        scalars,
    )
)
def test_checked_reminder_row_raises_only_storage_error(entry: ReminderEntry) -> None:
    def check() -> ReminderEntry:
        row = checked_reminder_row(entry)
        assert math.isfinite(row.start_at)
        assert row.period >= 1e-6
        return row

    outcome(check, StorageError, ReminderEntry)


# --- stored grain state -----------------------------------------------------------------------


@attrs.define
class Cart:
    items: list[str] = attrs.Factory(list)
    total: int = 0


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _deep_msgpack(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # fixarray of one, nested, around nil


@FUZZ
@given(
    st.binary(max_size=2000)
    | st.integers(min_value=1, max_value=200_000).map(_deep_msgpack)
    | msgpack_values.map(lambda v: msgpack.packb(v))
    | st.dictionaries(st.sampled_from(["items", "total", "x"]), msgpack_values).map(
        lambda v: msgpack.packb(v)
    )
)
def test_a_stored_state_decodes_or_raises_serialization_error(data: bytes) -> None:
    codec = Codec(make_converter())
    outcome(lambda: codec.loads(data, Cart, mapping=True), SerializationError, Cart)


@FUZZ
@given(st.tuples(scalars | st.binary(max_size=20), scalars) | st.lists(scalars).map(tuple))
def test_sqlite_records_raise_only_storage_error(row: tuple[Any, ...]) -> None:
    outcome(lambda: decode_record(row, "state 'cart' of cart/bob"), StorageError, object)


def test_an_integer_stored_as_state_data_is_not_turned_into_bytes() -> None:
    with pytest.raises(StorageError, match="data is int"):
        decode_record((10**12, "etag"), "state 'cart' of cart/bob")


# --- skip, count, log once --------------------------------------------------------------------


def test_malformed_rows_are_counted_and_logged_once_per_revision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = MalformedRows("test table", logging.getLogger("trio_grains.test"))
    with caplog.at_level(logging.WARNING, logger="trio_grains.test"):
        assert rows.report("k", 1, "bad row 'k'\nFAKE LOG LINE")
        assert not rows.report("k", 1, "bad row 'k'")
        assert rows.report("k", 2, "bad row 'k' again")
    assert rows.count == 2
    assert len(caplog.records) == 2
    assert "\n" not in caplog.records[0].getMessage()


def test_malformed_rows_remember_a_bounded_number_of_rows() -> None:
    rows = MalformedRows("test table", logging.getLogger("trio_grains.test"))
    for i in range(5000):
        rows.report(f"k{i}", 1, "bad")
    assert rows.count == 5000
    assert len(rows._seen) <= 1024


async def test_the_sqlite_table_skips_and_counts_rows_other_programs_wrote(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "grains.db"
    context = ProviderContext("default", "test-silo", "dev", cattrs.Converter())
    async with open_sqlite_reminder_table(context, {"path": str(path)}) as table:
        await table.upsert(ReminderEntry(GRAIN, "good", 5.0, 60.0))
        with sqlite3.connect(path) as raw:  # another program, ignoring the column types
            raw.executemany(
                "INSERT INTO reminders VALUES (?, ?, ?, ?, ?, ?)",
                [
                    ("cart", "bob/1", "text-time", "soon", 60.0, "e1"),
                    ("cart", "bob/1", "zero-period", 5.0, 0.0, "e2"),
                    ("cart", "bob/1", "blob-name", 5.0, 60.0, b"\x00etag"),
                    ("no/such type", "k", "x", 5.0, 60.0, "e3"),
                ],
            )
        raw.close()
        with caplog.at_level(logging.WARNING, logger="trio_grains.sqlite"):
            for _ in range(3):  # re-reads count and log nothing new
                assert [r.name for r in await table.read_all()] == ["good"]
                assert [r.name for r in await table.read_grain(GRAIN)] == ["good"]
        assert table.malformed_rows == 4
        assert len(caplog.records) == 4
        with pytest.raises(StorageError, match="zero-period"):
            await table.read(GRAIN, "zero-period")
        assert table.malformed_rows == 4


@attrs.define(eq=False)
class _LeakyTable(ReminderTable):
    """A third-party table that returns whatever is stored, unchecked."""

    rows: list[ReminderEntry]
    reads: int = 0

    async def read_all(self) -> list[ReminderEntry]:
        await trio.lowlevel.checkpoint()
        self.reads += 1
        return list(self.rows)

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        return [r for r in await self.read_all() if r.grain_id == grain_id]

    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        raise NotImplementedError

    async def upsert(self, entry: ReminderEntry) -> str:
        raise NotImplementedError

    async def remove(self, grain_id: GrainId, name: str, etag: str | None) -> bool:
        raise NotImplementedError


async def test_the_reminder_service_skips_rows_a_table_lets_through() -> None:
    table = _LeakyTable(
        [
            ReminderEntry(GRAIN, "good", 1e12, 60.0, "1"),
            ReminderEntry(GRAIN, "zero", 0.0, 0.0, "2"),  # divided by zero in the loop
            ReminderEntry(GRAIN, "nan", math.nan, 60.0, "3"),
            ReminderEntry(GRAIN, "text", "soon", 60.0, "4"),  # type: ignore[arg-type]
        ]
    )
    service = ReminderService(table, None, 1.0, refresh_interval=0.01)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        assert service.malformed_rows == 3  # the first read, before run() started
        reads = table.reads
        with trio.fail_after(5):
            while table.reads < reads + 3:  # noqa: ASYNC110 - polling the table
                await trio.sleep(0.01)
        assert service.malformed_rows == 3  # re-reads count nothing again
        assert service.scheduled() == 1
        assert [r.name for r in await service.list(GRAIN)] == ["good"]
        nursery.cancel_scope.cancel()
