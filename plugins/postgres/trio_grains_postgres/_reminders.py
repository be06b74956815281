"""The ``postgres`` reminder table: one row per (grain type, grain key, reminder name).

Times are stored as they come (wall-clock epoch seconds, ``DOUBLE PRECISION``). An upsert
is one ``INSERT ... ON CONFLICT DO UPDATE`` with a fresh ETag; a removal with an ETag is
``DELETE ... WHERE etag = $4``.
"""

from __future__ import annotations

from typing import Any

import attrs

from trio_grains import GrainId, GrainIdError, GrainType, ReminderEntry, ReminderTable, StorageError

from ._database import Database
from ._values import Statement, new_etag, table_statements

__all__ = ["PostgresReminderTable"]

_COLUMNS = "grain_type, grain_key, name, start_at, period, etag"


_STATEMENTS = {
    "all": f"SELECT {_COLUMNS} FROM {{table}}",
    "grain": f"SELECT {_COLUMNS} FROM {{table}} WHERE grain_type = $1 AND grain_key = $2",
    "one": (
        f"SELECT {_COLUMNS} FROM {{table}} WHERE grain_type = $1 AND grain_key = $2 AND name = $3"
    ),
    "upsert": (
        f"INSERT INTO {{table}} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (grain_type, grain_key, name) DO UPDATE SET "
        "start_at = EXCLUDED.start_at, period = EXCLUDED.period, etag = EXCLUDED.etag"
    ),
    "remove": "DELETE FROM {table} WHERE grain_type = $1 AND grain_key = $2 AND name = $3",
    "remove_etag": (
        "DELETE FROM {table} WHERE grain_type = $1 AND grain_key = $2 AND name = $3 AND etag = $4"
    ),
}


def _entry(row: tuple[Any, ...]) -> ReminderEntry:
    grain_type, grain_key, name, start_at, period, etag = row
    try:
        grain_id = GrainId(GrainType(grain_type), grain_key)
    except GrainIdError as exc:
        raise StorageError(
            f"reminder row ({grain_type!r}, {grain_key!r}, {name!r}) does not name a valid "
            f"grain: {exc}. Delete or repair that row"
        ) from exc
    return ReminderEntry(grain_id, name, float(start_at), float(period), etag)


@attrs.define(eq=False)
class PostgresReminderTable(ReminderTable):
    """Reminders in the ``reminders`` table of a PostgreSQL schema.

    Open it with the silo's configuration (``[reminders] provider = "postgres"``) or
    :func:`~trio_grains_postgres.open_postgres_reminder_table`.
    """

    _db: Database
    _sql: dict[str, Statement] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._sql = table_statements("reminders", self._db.options.schema, "reminders", _STATEMENTS)

    @property
    def database(self) -> Database:
        """The connection pool (``statistics()`` has its counters)."""
        return self._db

    async def read_all(self) -> list[ReminderEntry]:
        result = await self._db.execute("reading all reminders", self._sql["all"])
        return [_entry(row) for row in result.rows]

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        params = (str(grain_id.type), grain_id.key)
        what = f"reading the reminders of {grain_id}"
        result = await self._db.execute(what, self._sql["grain"], params)
        return [_entry(row) for row in result.rows]

    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        params = (str(grain_id.type), grain_id.key, name)
        what = f"reading reminder {name!r} of {grain_id}"
        rows = (await self._db.execute(what, self._sql["one"], params)).rows
        return _entry(rows[0]) if rows else None

    async def upsert(self, entry: ReminderEntry) -> str:
        etag = new_etag()
        params = (
            str(entry.grain_id.type),
            entry.grain_id.key,
            entry.name,
            float(entry.start_at),
            float(entry.period),
            etag,
        )
        what = f"storing reminder {entry.name!r} of {entry.grain_id}"
        await self._db.execute(what, self._sql["upsert"], params)
        return etag

    async def remove(self, grain_id: GrainId, name: str, etag: str | None) -> bool:
        key = (str(grain_id.type), grain_id.key, name)
        what = f"removing reminder {name!r} of {grain_id}"
        if etag is None:
            result = await self._db.execute(what, self._sql["remove"], key)
        else:
            result = await self._db.execute(what, self._sql["remove_etag"], (*key, etag))
        return result.rowcount == 1
