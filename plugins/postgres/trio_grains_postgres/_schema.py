"""The tables, their versions, and the migrations between versions.

Everything lives in one PostgreSQL schema (option ``schema``, default ``trio_grains``)::

    schema_version (version INTEGER PRIMARY KEY, description TEXT, applied_at TIMESTAMPTZ)
    grain_state    (state_name, grain_type, grain_key TEXT, data BYTEA, etag TEXT,
                    PRIMARY KEY (state_name, grain_type, grain_key))
    reminders      (grain_type, grain_key, name TEXT, start_at, period DOUBLE PRECISION,
                    etag TEXT, PRIMARY KEY (grain_type, grain_key, name))

:func:`migrate` brings a schema to :data:`SCHEMA_VERSION` (creating it if needed) in one
transaction, under an advisory lock so that silos starting together do not race; it is
what a provider runs when it opens with ``create_schema = true``, and what
``python -m trio_grains_postgres migrate`` runs for deployments whose silos have no DDL
rights. :func:`check_version` is what a provider runs otherwise.

:func:`migrate`, :func:`current_version` and :func:`check_version` take a psycopg
connection and block (the ``migrate`` command uses them); a provider runs the same steps
on a Trio-native connection with :func:`prepare_schema`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from trio_grains import StorageError

if TYPE_CHECKING:
    from ._native import TrioPgConnection

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "check_version",
    "current_version",
    "migrate",
    "prepare_schema",
]

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "grain_state and reminders tables",
        (
            """
            CREATE TABLE IF NOT EXISTS {schema}.grain_state (
                state_name TEXT NOT NULL,
                grain_type TEXT NOT NULL,
                grain_key TEXT NOT NULL,
                data BYTEA NOT NULL,
                etag TEXT NOT NULL,
                PRIMARY KEY (state_name, grain_type, grain_key)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS {schema}.reminders (
                grain_type TEXT NOT NULL,
                grain_key TEXT NOT NULL,
                name TEXT NOT NULL,
                start_at DOUBLE PRECISION NOT NULL,
                period DOUBLE PRECISION NOT NULL,
                etag TEXT NOT NULL,
                PRIMARY KEY (grain_type, grain_key, name)
            )
            """,
        ),
    ),
)
"""``(version, description, statements)``, in order; ``{schema}`` is the quoted schema."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema version this package reads and writes."""

_LOCK_NAMESPACE = "trio_grains_postgres:"


def _q(statement: str, schema: str) -> sql.Composed:
    return sql.SQL(statement).format(schema=sql.Identifier(schema))


_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS {schema}.schema_version (
        version INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""
_MAX_VERSION = "SELECT max(version) FROM {schema}.schema_version"


def current_version(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> int:
    """The version of *schema* (0 when it has no version table)."""
    table = sql.Identifier(schema, "schema_version").as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute(_q(_MAX_VERSION, schema))
    version = found.fetchone()
    return int(str(version[0])) if version and version[0] is not None else 0


def migrate(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> tuple[int, int]:
    """Create or upgrade *schema* to :data:`SCHEMA_VERSION`; return ``(before, after)``.

    One transaction: either every missing migration is applied or none is. A schema that
    is already current is left alone without any DDL, so a role that may only read and
    write the tables can run this too. Raises :class:`~trio_grains.StorageError` if the
    schema is newer than this package knows.
    """
    with conn.transaction():
        version = current_version(conn, schema)
    _refuse_newer(version, schema)
    if version == SCHEMA_VERSION:
        return version, version
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_NAMESPACE + schema,)
        )
        conn.execute(_q("CREATE SCHEMA IF NOT EXISTS {schema}", schema))
        conn.execute(_q(_VERSION_TABLE, schema))
        before = current_version(conn, schema)
        _refuse_newer(before, schema)
        for version, description, statements in MIGRATIONS:
            if version <= before:
                continue
            for statement in statements:
                conn.execute(_q(statement, schema))
            conn.execute(
                _q(
                    "INSERT INTO {schema}.schema_version (version, description) VALUES (%s, %s)",
                    schema,
                ),
                (version, description),
            )
    return before, SCHEMA_VERSION


def check_version(conn: psycopg.Connection[tuple[object, ...]], schema: str, target: str) -> None:
    """Raise :class:`~trio_grains.StorageError` unless *schema* is at :data:`SCHEMA_VERSION`."""
    version = current_version(conn, schema)
    _refuse_newer(version, schema)
    _refuse_old(version, schema, target)


async def _current_version(conn: TrioPgConnection, schema: str) -> int:
    table = sql.Identifier(schema, "schema_version").as_string()
    found = await conn.execute(b"SELECT to_regclass($1)", [table])
    if found.rows[0][0] is None:
        return 0
    rows = (await conn.execute(_q(_MAX_VERSION, schema).as_bytes())).rows
    return 0 if rows[0][0] is None else int(rows[0][0])


async def prepare_schema(
    conn: TrioPgConnection, schema: str, target: str, *, create: bool
) -> tuple[int, int]:
    """What a provider runs when it opens, on a Trio-native connection.

    With *create*, :func:`migrate`'s steps: return ``(before, after)``; else
    :func:`check_version`'s (``(version, version)``). On failure the connection is closed
    (which rolls back): it may be in the middle of the migration's transaction.
    """
    try:
        version = await _current_version(conn, schema)
        _refuse_newer(version, schema)
        if not create:
            _refuse_old(version, schema, target)
        if version == SCHEMA_VERSION:
            return version, version
        await conn.execute(b"BEGIN")
        await conn.execute(
            b"SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [_LOCK_NAMESPACE + schema]
        )
        await conn.execute(_q("CREATE SCHEMA IF NOT EXISTS {schema}", schema).as_bytes())
        await conn.execute(_q(_VERSION_TABLE, schema).as_bytes())
        before = await _current_version(conn, schema)
        _refuse_newer(before, schema)
        for number, description, statements in MIGRATIONS:
            if number <= before:
                continue
            for statement in statements:
                await conn.execute(_q(statement, schema).as_bytes())
            insert = "INSERT INTO {schema}.schema_version (version, description) VALUES ($1, $2)"
            await conn.execute(_q(insert, schema).as_bytes(), [number, description])
        await conn.execute(b"COMMIT")
    except BaseException:
        conn.close()
        raise
    return before, SCHEMA_VERSION


def _refuse_old(version: int, schema: str, target: str) -> None:
    if version < SCHEMA_VERSION:
        state = "does not exist" if version == 0 else f"is at version {version}"
        raise StorageError(
            f"schema {schema!r} in {target} {state}; this trio-grains-postgres needs version "
            f"{SCHEMA_VERSION}. Run `python -m trio_grains_postgres migrate --dsn <your dsn> "
            f"--schema {schema}` as a role that may create tables, or set create_schema = true"
        )


def _refuse_newer(version: int, schema: str) -> None:
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"schema {schema!r} is at version {version}, newer than the version "
            f"{SCHEMA_VERSION} this trio-grains-postgres knows; upgrade trio-grains-postgres"
        )
