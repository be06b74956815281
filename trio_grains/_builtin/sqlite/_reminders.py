"""The sqlite reminder table."""

from __future__ import annotations

import sqlite3

import attrs

from ..._ids import GrainId, GrainType
from ..._reminders import ReminderEntry, ReminderTable
from ._connection import SqliteStatistics, _Connection, _new_etag

# --- reminder table --------------------------------------------------------------------------

_REMINDER_COLUMNS = "grain_type, grain_key, name, start_at, period, etag"


def _entry(row: tuple[str, str, str, float, float, str]) -> ReminderEntry:
    grain_type, grain_key, name, start_at, period, etag = row
    return ReminderEntry(GrainId(GrainType(grain_type), grain_key), name, start_at, period, etag)


@attrs.define(eq=False)
class SqliteReminderTable(ReminderTable):
    """Reminder rows in the ``reminders`` table of a SQLite file."""

    _conn: _Connection

    def statistics(self) -> SqliteStatistics:
        return self._conn.statistics()

    async def read_all(self) -> list[ReminderEntry]:
        def read_all(conn: sqlite3.Connection) -> list[ReminderEntry]:
            rows = conn.execute(f"SELECT {_REMINDER_COLUMNS} FROM reminders").fetchall()
            return [_entry(row) for row in rows]

        return await self._conn.call(read_all, writes=False)

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        key = (str(grain_id.type), grain_id.key)

        def read_grain(conn: sqlite3.Connection) -> list[ReminderEntry]:
            rows = conn.execute(
                f"SELECT {_REMINDER_COLUMNS} FROM reminders WHERE grain_type = ? AND grain_key = ?",
                key,
            ).fetchall()
            return [_entry(row) for row in rows]

        return await self._conn.call(read_grain, writes=False)

    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        key = (str(grain_id.type), grain_id.key, name)

        def read(conn: sqlite3.Connection) -> ReminderEntry | None:
            row = conn.execute(
                f"SELECT {_REMINDER_COLUMNS} FROM reminders "
                "WHERE grain_type = ? AND grain_key = ? AND name = ?",
                key,
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._conn.call(read, writes=False)

    async def upsert(self, entry: ReminderEntry) -> str:
        values = (
            str(entry.grain_id.type),
            entry.grain_id.key,
            entry.name,
            float(entry.start_at),
            float(entry.period),
        )

        def upsert(conn: sqlite3.Connection) -> str:
            new = _new_etag()
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
