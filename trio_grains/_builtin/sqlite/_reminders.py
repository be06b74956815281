"""The sqlite reminder table.

SQLite does not enforce column types (a ``REAL`` column takes a string, a ``TEXT`` one a
blob), and the file may be shared by other programs, so every row read is decoded
strictly (:func:`decode_reminder_row`): a row that fails is skipped by ``read_all`` and
``read_grain``, counted in :attr:`SqliteReminderTable.malformed_rows` and logged once;
``read`` of it raises :class:`~trio_grains.StorageError`.

May import: layers 0-7 (the reminder-table contract) and ``_connection``. Not the plugin
manager, the silo or the client.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import attrs

from ..._exceptions import StorageError
from ..._ids import GrainId, GrainType
from ..._reminders import ReminderEntry, ReminderTable, checked_reminder_row
from ..._rows import MalformedRows
from ._connection import SqliteConnection, SqliteStatistics, new_etag

log = logging.getLogger("trio_grains.sqlite")

# --- reminder table --------------------------------------------------------------------------

_REMINDER_COLUMNS = "grain_type, grain_key, name, start_at, period, etag"


def decode_reminder_row(row: tuple[Any, ...]) -> ReminderEntry:
    """The reminder of a row of the ``reminders`` table (its columns in the order of
    ``_REMINDER_COLUMNS``); :class:`~trio_grains.StorageError`, and nothing else, if the
    row holds no valid reminder (a value of the wrong type included: nothing is coerced)."""
    try:
        grain_type, grain_key, name, start_at, period, etag = row
        if not isinstance(grain_type, str) or not isinstance(grain_key, str):
            raise ValueError("grain_type and grain_key must be TEXT")
        if not isinstance(etag, str):
            raise ValueError("etag must be TEXT")
        grain_id = GrainId(GrainType(grain_type), grain_key)
        return checked_reminder_row(ReminderEntry(grain_id, name, start_at, period, etag))
    except Exception as exc:  # ValueError, StorageError, an unexpected row shape: malformed
        raise StorageError(f"malformed reminder row {_row_name(row)}: {exc}") from None


def _row_name(row: object) -> str:
    """The key of a row, for messages: ``'type/key'.'name'`` (each cut short)."""
    try:
        grain_type, grain_key, name = (str(field)[:100] for field in row[:3])  # type: ignore[index]
    except Exception:
        return "(unreadable)"
    return f"{grain_type + '/' + grain_key!r}.{name!r}"


@attrs.define(eq=False)
class SqliteReminderTable(ReminderTable):
    """Reminder rows in the ``reminders`` table of a SQLite file."""

    _conn: SqliteConnection
    _malformed: MalformedRows = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._malformed = MalformedRows(f"sqlite reminders {self._conn.options.path!r}", log)

    def statistics(self) -> SqliteStatistics:
        return self._conn.statistics()

    @property
    def malformed_rows(self) -> int:
        """How many malformed rows this table skipped or refused (each row once)."""
        return self._malformed.count

    def _rows(self, rows: list[tuple[Any, ...]]) -> list[ReminderEntry]:
        """The reminders of *rows*; malformed ones skipped, counted and logged once."""
        return self._malformed.decode_all(rows, decode_reminder_row, StorageError, _row_name, hash)

    async def read_all(self) -> list[ReminderEntry]:
        def read_all(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(f"SELECT {_REMINDER_COLUMNS} FROM reminders").fetchall()

        return self._rows(await self._conn.call(read_all, writes=False, size=None))

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        key = (str(grain_id.type), grain_id.key)

        def read_grain(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {_REMINDER_COLUMNS} FROM reminders WHERE grain_type = ? AND grain_key = ?",
                key,
            ).fetchall()

        return self._rows(await self._conn.call(read_grain, writes=False))

    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        key = (str(grain_id.type), grain_id.key, name)

        def read(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(
                f"SELECT {_REMINDER_COLUMNS} FROM reminders "
                "WHERE grain_type = ? AND grain_key = ? AND name = ?",
                key,
            ).fetchone()
            return row

        row = await self._conn.call(read, writes=False)
        if row is None:
            return None
        try:
            return decode_reminder_row(row)
        except StorageError as exc:
            self._malformed.report(_row_name(row), hash(row), exc)
            raise StorageError(
                f"sqlite database {self._conn.options.path!r}: {exc}; upsert or remove the "
                "reminder to replace it"
            ) from None

    async def upsert(self, entry: ReminderEntry) -> str:
        values = (
            str(entry.grain_id.type),
            entry.grain_id.key,
            entry.name,
            float(entry.start_at),
            float(entry.period),
        )

        def upsert(conn: sqlite3.Connection) -> str:
            new = new_etag()
            conn.execute(
                f"INSERT INTO reminders ({_REMINDER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (grain_type, grain_key, name) DO UPDATE SET "
                "start_at = excluded.start_at, period = excluded.period, etag = excluded.etag",
                (*values, new),
            )
            return new

        return await self._conn.call(upsert, writes=True)

    async def remove(self, grain_id: GrainId, name: str, etag: str | None) -> bool:
        key = (str(grain_id.type), grain_id.key, name)

        def remove(conn: sqlite3.Connection) -> bool:
            sql = "DELETE FROM reminders WHERE grain_type = ? AND grain_key = ? AND name = ?"
            if etag is None:
                cursor = conn.execute(sql, key)
            else:
                cursor = conn.execute(sql + " AND etag = ?", (*key, etag))
            return cursor.rowcount == 1

        return await self._conn.call(remove, writes=True)

    def __repr__(self) -> str:
        return f"<SqliteReminderTable {self._conn.options.path!r}>"
