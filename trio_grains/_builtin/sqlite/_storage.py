"""The sqlite grain storage provider.

SQLite does not enforce column types, so a record read is checked: its ``data`` must be a
BLOB and its ``etag`` TEXT, or the read is a :class:`~trio_grains.StorageError` (the
grain's activation fails; the silo goes on). Nothing is coerced: ``bytes(n)`` of an
integer would allocate *n* bytes.

May import: layers 0-7 (the storage contract) and ``_connection``. Not the plugin manager,
the silo or the client.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import attrs

from ..._ids import GrainId
from ..._storage import GrainStorage, InconsistentStateError, StoredState
from ._connection import SqliteConnection, SqliteStatistics, new_etag

# --- grain storage ---------------------------------------------------------------------------


def decode_record(row: tuple[Any, ...], what: str) -> StoredState:
    """The record of a ``(data, etag)`` row of *what*; :class:`~trio_grains.StorageError`
    (and nothing else) unless ``data`` is a BLOB and ``etag`` non-empty TEXT."""
    return StoredState.from_row(row, what, data_type="a BLOB", etag_type="TEXT")


def _mismatch(
    conn: sqlite3.Connection, state_name: str, grain_id: GrainId, expected: str | None
) -> InconsistentStateError:
    row = conn.execute(
        "SELECT etag FROM grain_state WHERE state_name = ? AND grain_type = ? AND grain_key = ?",
        (state_name, str(grain_id.type), grain_id.key),
    ).fetchone()
    return InconsistentStateError(
        f"{state_name} of {grain_id}: the write expected ETag {expected!r} but the stored "
        f"one is {row[0] if row else None!r}"
    )


@attrs.define(eq=False)
class SqliteStorage(GrainStorage):
    """Grain states in the ``grain_state`` table of a SQLite file."""

    _conn: SqliteConnection

    def statistics(self) -> SqliteStatistics:
        return self._conn.statistics()

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        key = (state_name, str(grain_id.type), grain_id.key)

        def read(conn: sqlite3.Connection) -> StoredState | None:
            row = conn.execute(
                "SELECT data, etag FROM grain_state "
                "WHERE state_name = ? AND grain_type = ? AND grain_key = ?",
                key,
            ).fetchone()
            if row is None:
                return None
            return decode_record(row, f"state {state_name!r} of {grain_id}")

        return await self._conn.call(read, writes=False)

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        key = (state_name, str(grain_id.type), grain_id.key)
        blob = bytes(data)

        def write(conn: sqlite3.Connection) -> str:
            new = new_etag()
            if etag is None:
                try:
                    conn.execute(
                        "INSERT INTO grain_state (state_name, grain_type, grain_key, data, etag) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (*key, blob, new),
                    )
                except sqlite3.IntegrityError:
                    raise _mismatch(conn, state_name, grain_id, etag) from None
            else:
                cursor = conn.execute(
                    "UPDATE grain_state SET data = ?, etag = ? "
                    "WHERE state_name = ? AND grain_type = ? AND grain_key = ? AND etag = ?",
                    (blob, new, *key, etag),
                )
                if cursor.rowcount != 1:
                    raise _mismatch(conn, state_name, grain_id, etag)
            return new

        return await self._conn.call(write, writes=True, size=len(blob))

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        key = (state_name, str(grain_id.type), grain_id.key)

        def clear(conn: sqlite3.Connection) -> None:
            if etag is None:
                row = conn.execute(
                    "SELECT 1 FROM grain_state "
                    "WHERE state_name = ? AND grain_type = ? AND grain_key = ?",
                    key,
                ).fetchone()
                if row is not None:
                    raise _mismatch(conn, state_name, grain_id, etag)
                return
            cursor = conn.execute(
                "DELETE FROM grain_state "
                "WHERE state_name = ? AND grain_type = ? AND grain_key = ? AND etag = ?",
                (*key, etag),
            )
            if cursor.rowcount != 1:
                raise _mismatch(conn, state_name, grain_id, etag)

        await self._conn.call(clear, writes=True)

    def __repr__(self) -> str:
        return f"<SqliteStorage {self._conn.options.path!r}>"
