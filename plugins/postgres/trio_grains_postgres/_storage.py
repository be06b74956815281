"""The ``postgres`` grain storage provider: one row per (state name, grain type, grain key).

Compare-and-set is one atomic statement, so two silos writing the same record cannot both
win: a write with an ETag is ``UPDATE ... WHERE <key> AND etag = %s`` and succeeded if it
changed a row; a write expecting no record (ETag ``None``) is ``INSERT ... ON CONFLICT DO
NOTHING`` and succeeded if it inserted one. Under PostgreSQL's row locks, of N writers
holding the same ETag exactly one updates the row; the others see the new ETag and change
nothing. ETags are random 128-bit hex strings made by the provider.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs
from psycopg import sql

from trio_grains import GrainId, GrainStorage, InconsistentStateError, StoredState

from ._database import Connection, Database

__all__ = ["PostgresStorage"]


def _statements(schema: str) -> dict[str, bytes]:
    table = sql.Identifier(schema, "grain_state")
    key = sql.SQL("state_name = %s AND grain_type = %s AND grain_key = %s")
    texts = {
        "read": "SELECT data, etag FROM {table} WHERE {key}",
        "etag": "SELECT etag FROM {table} WHERE {key}",
        "insert": (
            "INSERT INTO {table} (state_name, grain_type, grain_key, data, etag) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ),
        "update": "UPDATE {table} SET data = %s, etag = %s WHERE {key} AND etag = %s",
        "delete": "DELETE FROM {table} WHERE {key} AND etag = %s",
    }
    return {
        name: sql.SQL(text).format(table=table, key=key).as_bytes() for name, text in texts.items()
    }


def _new_etag() -> str:
    return uuid.uuid4().hex


@attrs.define(eq=False)
class PostgresStorage(GrainStorage):
    """Grain state in the ``grain_state`` table of a PostgreSQL schema.

    Open it with the silo's configuration (provider ``postgres``) or
    :func:`~trio_grains_postgres.open_postgres_storage`.
    """

    _db: Database
    _sql: dict[str, bytes] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._sql = _statements(self._db.options.schema)

    @property
    def database(self) -> Database:
        """The connection pool (``statistics()`` has its counters)."""
        return self._db

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        key = (state_name, str(grain_id.type), grain_id.key)

        def read(conn: Connection) -> StoredState | None:
            row = conn.execute(self._sql["read"], key, binary=True).fetchone()
            return None if row is None else StoredState(bytes(row[0]), row[1])

        return await self._db.run(f"reading {state_name!r} of {grain_id}", read)

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        key = (state_name, str(grain_id.type), grain_id.key)
        new_etag = _new_etag()
        data = bytes(data)

        def write(conn: Connection) -> str:
            if etag is None:
                cur = conn.execute(self._sql["insert"], (*key, data, new_etag))
            else:
                cur = conn.execute(self._sql["update"], (data, new_etag, *key, etag))
            if cur.rowcount != 1:
                raise self._mismatch(conn, key, state_name, grain_id, etag)
            return new_etag

        return await self._db.run(f"writing {state_name!r} of {grain_id}", write)

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        key = (state_name, str(grain_id.type), grain_id.key)

        def clear(conn: Connection) -> None:
            if etag is None:
                row = conn.execute(self._sql["etag"], key).fetchone()
                if row is not None:
                    raise _conflict(state_name, grain_id, None, row[0])
                return
            if conn.execute(self._sql["delete"], (*key, etag)).rowcount != 1:
                raise self._mismatch(conn, key, state_name, grain_id, etag)

        await self._db.run(f"clearing {state_name!r} of {grain_id}", clear)

    def _mismatch(
        self,
        conn: Connection,
        key: tuple[Any, ...],
        state_name: str,
        grain_id: GrainId,
        expected: str | None,
    ) -> InconsistentStateError:
        # Only to name the stored ETag in the message: the decision was the statement's.
        row = conn.execute(self._sql["etag"], key).fetchone()
        return _conflict(state_name, grain_id, expected, None if row is None else row[0])


def _conflict(
    state_name: str, grain_id: GrainId, expected: str | None, actual: str | None
) -> InconsistentStateError:
    return InconsistentStateError(
        f"{state_name} of {grain_id}: the operation expected ETag {expected!r} but the stored "
        f"one is {actual!r}" + (" (no record)" if actual is None else "")
    )
