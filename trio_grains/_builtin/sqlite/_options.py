"""The options of the sqlite providers, their schema, and a connection opened with both.

May import: layers 0-7 (the errors it raises). Not the connection thread that uses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from ..._exceptions import ConfigError, StorageError

log = logging.getLogger("trio_grains.sqlite")

MEMORY: Final = ":memory:"
SCHEMA_VERSION: Final = 1
_SYNCHRONOUS: Final = ("NORMAL", "FULL")
_OPTIONS: Final = ("busy_timeout", "path", "synchronous")

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS trio_grains_schema ("
    "component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
STATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS grain_state ("
    "state_name TEXT NOT NULL, grain_type TEXT NOT NULL, grain_key TEXT NOT NULL, "
    "data BLOB NOT NULL, etag TEXT NOT NULL, "
    "PRIMARY KEY (state_name, grain_type, grain_key))"
)
REMINDER_TABLE = (
    "CREATE TABLE IF NOT EXISTS reminders ("
    "grain_type TEXT NOT NULL, grain_key TEXT NOT NULL, name TEXT NOT NULL, "
    "start_at REAL NOT NULL, period REAL NOT NULL, etag TEXT NOT NULL, "
    "PRIMARY KEY (grain_type, grain_key, name))"
)


# --- options ---------------------------------------------------------------------------------


@attrs.frozen
class SqliteOptions:
    """The validated ``options`` table of a ``sqlite`` provider (``path`` made absolute)."""

    path: str
    synchronous: str = "NORMAL"
    busy_timeout: float = 5.0


def parse_options(where: str, options: Mapping[str, Any]) -> SqliteOptions:
    """Validate *options* of the provider configured at *where*, or raise ConfigError."""
    valid = ", ".join(_OPTIONS)
    for key in options:
        if key not in _OPTIONS:
            raise ConfigError(f"{where}: unknown option {key!r}; valid options: {valid}")
    if "path" not in options:
        raise ConfigError(
            f"{where}: option 'path' is required: the database file, e.g. "
            f'path = "grains.db" (or ":memory:" for a database that is not durable)'
        )
    path = options["path"]
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise ConfigError(f"{where}: option 'path' must be a non-empty file name, got {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise ConfigError(f"{where}: option 'path' must be a text path, got {path!r}")
    if path != MEMORY:
        path = os.path.abspath(path)  # relative to the working directory at startup
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise ConfigError(
                f"{where}: option 'path' is {path!r}, but the directory {folder!r} does not "
                "exist; create it or fix the path"
            )
    sync = options.get("synchronous", "NORMAL")
    if not isinstance(sync, str) or sync.upper() not in _SYNCHRONOUS:
        raise ConfigError(
            f"{where}: option 'synchronous' must be \"NORMAL\" (survives a process crash) or "
            f'"FULL" (also survives power loss), got {sync!r}'
        )
    timeout = options.get("busy_timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ConfigError(
            f"{where}: option 'busy_timeout' must be a number of seconds >= 0 (how long to "
            f"wait for another connection's lock), got {timeout!r}"
        )
    return SqliteOptions(path, sync.upper(), float(timeout))


def _create_private(path: str) -> None:
    """Create *path* empty, readable and writable by its owner only (0600), unless it exists.

    Grain states and reminders are nobody else's business, but sqlite3 creates a database
    0644 (less the umask). SQLite gives the ``-wal``, ``-shm`` and ``-journal`` files the
    mode of the database file, so creating it first is enough, without touching the
    process-wide umask while other threads create files. An empty file is a new database
    to SQLite. An existing file keeps its mode (an operator may have chosen it); any other
    failure is left for sqlite3 to report, naming the file.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        return
    os.close(fd)


# --- a connection ----------------------------------------------------------------------------


def inline_ok(options: SqliteOptions, journal_mode: str) -> bool:
    """Whether short calls may run on the Trio thread: a commit must not wait for the disk
    (WAL with ``synchronous=NORMAL``; any mode in memory)."""
    if options.path == MEMORY:
        return True
    return journal_mode.lower() == "wal" and options.synchronous == "NORMAL"


def connect(
    options: SqliteOptions, schema: Sequence[str], component: str
) -> tuple[sqlite3.Connection, str]:
    """A connection to the file of *options* and its journal mode, the tables of
    *component* created (*schema*) unless they are there; automatic checkpoints are off
    when :func:`inline_ok` (the connection's thread runs them)."""
    path = options.path
    if path != MEMORY:
        _create_private(path)
    # check_same_thread=False: the Trio thread uses it too, never at the same time.
    conn = sqlite3.connect(
        path, timeout=options.busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        journal_mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        if path != MEMORY and journal_mode.lower() != "wal":
            log.warning("sqlite database %r runs in journal mode %r, not WAL", path, journal_mode)
        conn.execute(f"PRAGMA synchronous={options.synchronous}")
        if path != MEMORY and inline_ok(options, journal_mode):
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        version = _schema_version(conn, component)
        if version is None:  # a new file, or a new component in it: create the tables
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in (VERSION_TABLE, *schema):
                    conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO trio_grains_schema (component, version) VALUES (?, ?)",
                    (component, SCHEMA_VERSION),
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            version = _schema_version(conn, component)
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"sqlite database {path!r} has schema version {version} for {component}, but "
                f"this trio-grains knows version {SCHEMA_VERSION}; upgrade trio-grains or use "
                "another file"
            )
    except BaseException:
        conn.close()
        raise
    return conn, journal_mode


def _schema_version(conn: sqlite3.Connection, component: str) -> int | None:
    """The component's schema version (None: no tables yet). Only reads, so a file that is
    read-only for now still opens, and fails on writes only."""
    try:
        row = conn.execute(
            "SELECT version FROM trio_grains_schema WHERE component = ?", (component,)
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return None
    return None if row is None else int(row[0])
