"""The ``postgres`` grain storage provider: one row per (state name, grain type, grain key).

Compare-and-set is one atomic statement, so two silos writing the same record cannot both
win: a write with an ETag is ``UPDATE ... WHERE <key> AND etag = $6`` and succeeded if it
changed a row; a write expecting no record (ETag ``None``) is ``INSERT ... ON CONFLICT DO
NOTHING`` and succeeded if it inserted one. Under PostgreSQL's row locks, of N writers
holding the same ETag exactly one updates the row; the others see the new ETag and change
nothing. ETags are random 128-bit hex strings made by the provider.

A record read is checked (``data`` bytes, ``etag`` non-empty text; a table altered by hand
may hold anything): one that is not is a :class:`~trio_grains.StorageError`, so the
grain's activation fails and the silo goes on.
"""

from __future__ import annotations

from typing import Any

import attrs

from trio_grains import GrainId, GrainStorage, InconsistentStateError, StoredState

from ._database import Database
from ._values import Statement, new_etag, table_statements

__all__ = ["PostgresStorage"]

_KEY = "state_name = $1 AND grain_type = $2 AND grain_key = $3"
_STATEMENTS = {
    "read": f"SELECT data, etag FROM {{table}} WHERE {_KEY}",
    "etag": f"SELECT etag FROM {{table}} WHERE {_KEY}",
    "insert": (
        "INSERT INTO {table} (state_name, grain_type, grain_key, data, etag) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
    ),
    "update": (f"UPDATE {{table}} SET data = $4, etag = $5 WHERE {_KEY} AND etag = $6"),
    "delete": f"DELETE FROM {{table}} WHERE {_KEY} AND etag = $4",
}


@attrs.define(eq=False)
class PostgresStorage(GrainStorage):
    """Grain state in the ``grain_state`` table of a PostgreSQL schema.

    Open it with the silo's configuration (provider ``postgres``) or
    :func:`~trio_grains_postgres.open_postgres_storage`.
    """

    _db: Database
    _sql: dict[str, Statement] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._sql = table_statements("state", self._db.options.schema, "grain_state", _STATEMENTS)

    @property
    def database(self) -> Database:
        """The connection pool (``statistics()`` has its counters)."""
        return self._db

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        key = (state_name, str(grain_id.type), grain_id.key)
        what = f"reading {state_name!r} of {grain_id}"
        rows = (await self._db.execute(what, self._sql["read"], key)).rows
        return _record(rows[0], f"{state_name!r} of {grain_id}") if rows else None

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        key = (state_name, str(grain_id.type), grain_id.key)
        fresh = new_etag()
        what = f"writing {state_name!r} of {grain_id}"
        if etag is None:
            result = await self._db.execute(what, self._sql["insert"], (*key, data, fresh))
        else:
            result = await self._db.execute(what, self._sql["update"], (*key, data, fresh, etag))
        if result.rowcount != 1:
            raise await self._mismatch(what, key, state_name, grain_id, etag)
        return fresh

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        key = (state_name, str(grain_id.type), grain_id.key)
        what = f"clearing {state_name!r} of {grain_id}"
        if etag is None:
            rows = (await self._db.execute(what, self._sql["etag"], key)).rows
            if rows:
                raise _conflict(state_name, grain_id, None, rows[0][0])
            return
        if (await self._db.execute(what, self._sql["delete"], (*key, etag))).rowcount != 1:
            raise await self._mismatch(what, key, state_name, grain_id, etag)

    async def _mismatch(
        self,
        what: str,
        key: tuple[str, str, str],
        state_name: str,
        grain_id: GrainId,
        expected: str | None,
    ) -> InconsistentStateError:
        # Only to name the stored ETag in the message: the decision was the statement's.
        rows = (await self._db.execute(what, self._sql["etag"], key)).rows
        return _conflict(state_name, grain_id, expected, rows[0][0] if rows else None)


def _record(row: tuple[Any, ...], what: str) -> StoredState:
    """The record of a ``(data, etag)`` row; StorageError (only) if it is not one."""
    return StoredState.from_row(row, what, data_type="bytea", etag_type="text")


def _conflict(
    state_name: str, grain_id: GrainId, expected: str | None, actual: str | None
) -> InconsistentStateError:
    return InconsistentStateError(
        f"{state_name} of {grain_id}: the operation expected ETag {expected!r} but the stored "
        f"one is {actual!r}" + (" (no record)" if actual is None else "")
    )
