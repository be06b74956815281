"""The ``postgres`` reminder table: one row per (grain type, grain key, reminder name).

Times are stored as they come (wall-clock epoch seconds, ``DOUBLE PRECISION``). An upsert
is one ``INSERT ... ON CONFLICT DO UPDATE`` with a fresh ETag; a removal with an ETag is
``DELETE ... WHERE etag = $4``.

The table is shared, so every row read is decoded strictly (:func:`decode_reminder_row`:
a valid grain, a name, times :func:`~trio_grains._reminders.checked_reminder_row` accepts,
``NaN``, infinities and a period of 0 refused). A row that fails is skipped by
``read_all`` and ``read_grain``, counted in :attr:`PostgresReminderTable.malformed_rows`
and logged once; ``read`` of it raises :class:`~trio_grains.StorageError`.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from trio_grains import GrainId, GrainType, ReminderEntry, ReminderTable, StorageError
from trio_grains._reminders import checked_reminder_row
from trio_grains._rows import MalformedRows

from ._database import Database
from ._values import Statement, new_etag, table_statements

__all__ = ["PostgresReminderTable", "decode_reminder_row"]

log = logging.getLogger("trio_grains_postgres")

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


def decode_reminder_row(row: tuple[Any, ...]) -> ReminderEntry:
    """The reminder of a row (the columns ``grain_type, grain_key, name, start_at, period,
    etag``); :class:`~trio_grains.StorageError`, and nothing else, if it holds no valid
    reminder. Nothing is coerced: the columns decode to str and float by their types."""
    try:
        grain_type, grain_key, name, start_at, period, etag = row
        if not isinstance(grain_type, str) or not isinstance(grain_key, str):
            raise ValueError("grain_type and grain_key must be text")
        if not isinstance(etag, str):
            raise ValueError("etag must be text")
        grain_id = GrainId(GrainType(grain_type), grain_key)
        return checked_reminder_row(ReminderEntry(grain_id, name, start_at, period, etag))
    except Exception as exc:  # GrainIdError, StorageError, a row of another shape
        raise StorageError(
            f"reminder row {_row_name(row)} holds no valid reminder: {exc}. Delete or "
            "repair that row"
        ) from None


def _row_name(row: object) -> str:
    """``('type', 'key', 'name')`` of a row, for messages (each cut short)."""
    try:
        return repr(tuple(str(field)[:100] for field in row[:3]))  # type: ignore[index]
    except Exception:
        return "(unreadable)"


@attrs.define(eq=False)
class PostgresReminderTable(ReminderTable):
    """Reminders in the ``reminders`` table of a PostgreSQL schema.

    Open it with the silo's configuration (``[reminders] provider = "postgres"``) or
    :func:`~trio_grains_postgres.open_postgres_reminder_table`.
    """

    _db: Database
    _sql: dict[str, Statement] = attrs.field(init=False)
    _malformed: MalformedRows = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._sql = table_statements("reminders", self._db.options.schema, "reminders", _STATEMENTS)
        self._malformed = MalformedRows(
            f"postgres reminders (schema {self._db.options.schema!r})", log
        )

    @property
    def malformed_rows(self) -> int:
        """How many malformed rows this table skipped or refused (each row once)."""
        return self._malformed.count

    def _rows(self, rows: list[tuple[Any, ...]]) -> list[ReminderEntry]:
        """The reminders of *rows*; malformed ones skipped, counted and logged once."""
        return self._malformed.decode_all(
            rows, decode_reminder_row, StorageError, _row_name, _revision
        )

    @property
    def database(self) -> Database:
        """The connection pool (``statistics()`` has its counters)."""
        return self._db

    async def read_all(self) -> list[ReminderEntry]:
        result = await self._db.execute("reading all reminders", self._sql["all"])
        return self._rows(result.rows)

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        params = (str(grain_id.type), grain_id.key)
        what = f"reading the reminders of {grain_id}"
        result = await self._db.execute(what, self._sql["grain"], params)
        return self._rows(result.rows)

    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        params = (str(grain_id.type), grain_id.key, name)
        what = f"reading reminder {name!r} of {grain_id}"
        rows = (await self._db.execute(what, self._sql["one"], params)).rows
        if not rows:
            return None
        try:
            return decode_reminder_row(rows[0])
        except StorageError as exc:
            self._malformed.report(_row_name(rows[0]), _revision(rows[0]), exc)
            raise

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


def _revision(row: tuple[Any, ...]) -> int:
    """What tells two versions of a row apart (for logging each once)."""
    try:
        return hash(tuple(row))
    except TypeError:
        return id(row)
