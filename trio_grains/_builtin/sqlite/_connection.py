# Threading design, chosen by measurement. Writes/s of 200-byte states, each a
# compare-and-set write in its own transaction unless grouped; WAL; median of 3 runs on a
# noisy 2-core VM (ext4, Python 3.11, SQLite 3.40; runs vary by about 30%):
#
#                                            synchronous=NORMAL      synchronous=FULL
#                                           1 writer  100 writers  1 writer  100 writers
#   raw sqlite3 loop on the Trio thread*      16,600     20,700      4,200      4,600
#   (a) to_thread.run_sync + trio.Lock         3,100      2,900      2,200      2,000
#   (b) own thread, one transaction per call   5,600      8,100      2,800      2,600
#   (b) own thread, group commit  <- chosen    4,800     42,400      2,700     34,100
#
#   * blocks the event loop the whole time: the baseline, not an option. "100 writers" is
#     100 Trio tasks writing to distinct grains (raw: the same statements round-robin).
#
# A thread hand-off costs more than a WAL commit without fsync, so a long-lived thread fed
# by a queue beats a to_thread hand-off plus a lock per call, and only a single owner of the
# connection can fold the writes of concurrent grains into one transaction: with 100
# writers, group commit beats the raw loop that commits each write (2x with NORMAL, 7x with
# FULL). A lone sequential writer pays the hand-off: about 0.2 ms per call here.
"""The connection thread of the sqlite providers: options, schema, group commit.

May import: layers 0-7 (the contracts of the providers it serves). Not the sqlite providers
beside it, which build on it, nor the plugin manager or the silo.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs
import outcome
import trio

from ..._exceptions import ConfigError, InternalError
from ..._storage import StorageError

log = logging.getLogger("trio_grains.sqlite")

T = TypeVar("T")

MEMORY: Final = ":memory:"
SCHEMA_VERSION: Final = 1
MAX_BATCH: Final = 512
"""The most calls folded into one transaction (bounds the latency of the last one)."""

_BUSY_CODES: Final = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_SYNCHRONOUS: Final = ("NORMAL", "FULL")
_OPTIONS: Final = ("busy_timeout", "path", "synchronous")

_VERSION_TABLE = (
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


# --- the connection thread -------------------------------------------------------------------


@attrs.frozen
class SqliteStatistics:
    """What a provider's connection thread has done.

    ``calls``: calls answered; ``transactions``: transactions committed or rolled back (fewer
    than ``calls`` when concurrent calls were grouped); ``largest_batch``: most calls in one
    transaction; ``reconnects``: times the connection was reopened after an error (say, the
    file was read-only); ``journal_mode``: ``"wal"`` (``"memory"`` for ``:memory:``).
    """

    path: str
    calls: int
    transactions: int
    largest_batch: int
    reconnects: int
    journal_mode: str


@attrs.define(eq=False)
class _Request:
    fn: Callable[[sqlite3.Connection], Any]
    writes: bool
    task: trio.lowlevel.Task
    result: outcome.Outcome[Any] | None = None


_STOP: Final = object()


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


@attrs.define(eq=False)
class SqliteConnection:
    """One sqlite3 connection owned by one thread, serving queued calls in transactions."""

    options: SqliteOptions
    schema: Sequence[str]
    component: str
    _queue: queue.SimpleQueue[_Request | object] = attrs.field(factory=queue.SimpleQueue)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _token: trio.lowlevel.TrioToken | None = attrs.field(default=None, init=False)
    _open: bool = attrs.field(default=False, init=False)
    _calls: int = attrs.field(default=0, init=False)
    _transactions: int = attrs.field(default=0, init=False)
    _largest_batch: int = attrs.field(default=0, init=False)
    _journal_mode: str = attrs.field(default="", init=False)
    _reconnects: int = attrs.field(default=0, init=False)
    # Owned by the thread:
    _sql: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _reconnect: bool = attrs.field(default=False, init=False)

    def statistics(self) -> SqliteStatistics:
        return SqliteStatistics(
            self.options.path,
            self._calls,
            self._transactions,
            self._largest_batch,
            self._reconnects,
            self._journal_mode,
        )

    # -- Trio side ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        opened = _Request(lambda conn: None, True, trio.lowlevel.current_task())
        self._thread = threading.Thread(
            target=self._serve,
            args=(opened,),
            name=f"trio-grains sqlite {self.options.path}",
            daemon=True,
        )
        self._thread.start()
        self._open = True
        try:
            await self._wait()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Let the thread answer every queued call, close the connection and join it."""
        if self._thread is None:
            return
        self._open = False
        self._queue.put(_STOP)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
        self._thread = None

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool) -> T:
        """Run ``fn(connection)`` in the thread, inside a transaction; its result or error."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._open:
            raise StorageError(f"sqlite database {self.options.path!r}: the provider is closed")
        self._queue.put(_Request(fn, writes, trio.lowlevel.current_task()))
        result: T = await self._wait()
        return result

    async def _wait(self) -> Any:
        # Not cancellable: the thread cannot be interrupted, so the caller waits for the
        # outcome (as trio.to_thread.run_sync does by default) and Trio delivers the
        # cancellation at its next checkpoint.
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    @staticmethod
    def _deliver(batch: list[_Request]) -> None:
        for request in batch:
            assert request.result is not None
            trio.lowlevel.reschedule(request.task, request.result)

    # -- thread side -------------------------------------------------------------------------

    def _serve(self, opened: _Request) -> None:
        assert self._token is not None
        try:
            self._sql = self._connect()
        except BaseException as exc:
            opened.result = outcome.Error(self._storage_error(exc))
            self._token.run_sync_soon(self._deliver, [opened])
            return
        opened.result = outcome.Value(None)
        self._token.run_sync_soon(self._deliver, [opened])
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                if first is _STOP:
                    break
                assert isinstance(first, _Request)
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    assert isinstance(more, _Request)
                    batch.append(more)
                self._run_batch(batch)
                self._calls += len(batch)
                self._largest_batch = max(self._largest_batch, len(batch))
                self._token.run_sync_soon(self._deliver, batch)
        finally:
            if self._sql is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._sql.execute("PRAGMA optimize")  # as SQLite advises before closing
                self._sql.close()
                self._sql = None
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Answer calls queued behind the stop (none, unless the loop above broke)."""
        assert self._token is not None
        leftovers = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Request):
                item.result = outcome.Error(
                    StorageError(f"sqlite database {self.options.path!r}: the provider is closed")
                )
                leftovers.append(item)
        if leftovers:
            self._token.run_sync_soon(self._deliver, leftovers)

    def _connect(self) -> sqlite3.Connection:
        if self.options.path != MEMORY:
            _create_private(self.options.path)
        conn = sqlite3.connect(
            self.options.path, timeout=self.options.busy_timeout, isolation_level=None
        )
        try:
            self._journal_mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if self.options.path != MEMORY and self._journal_mode.lower() != "wal":
                log.warning(
                    "sqlite database %r runs in journal mode %r, not WAL",
                    self.options.path,
                    self._journal_mode,
                )
            conn.execute(f"PRAGMA synchronous={self.options.synchronous}")
            version = self._schema_version(conn)
            if version is None:  # a new file, or a new component in it: create the tables
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in (_VERSION_TABLE, *self.schema):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT OR IGNORE INTO trio_grains_schema (component, version) "
                        "VALUES (?, ?)",
                        (self.component, SCHEMA_VERSION),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                version = self._schema_version(conn)
            if version != SCHEMA_VERSION:
                raise StorageError(
                    f"sqlite database {self.options.path!r} holds {self.component} "
                    f"schema version {version}, but this trio-grains knows version "
                    f"{SCHEMA_VERSION}; upgrade trio-grains or use another file"
                )
        except BaseException:
            conn.close()
            raise
        return conn

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        """The component's schema version (None: no tables yet). Only reads, so a file
        that is read-only for now still opens, and fails on writes only."""
        try:
            row = conn.execute(
                "SELECT version FROM trio_grains_schema WHERE component = ?", (self.component,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return None
        return None if row is None else int(row[0])

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            self._transaction(batch)
        except (sqlite3.Error, StorageError) as exc:
            if len(batch) == 1:
                batch[0].result = outcome.Error(self._failed(exc))
                return
            # One call's failure must not fail its neighbours: retry each on its own.
            for request in batch:
                try:
                    self._transaction([request])
                except (sqlite3.Error, StorageError) as each:
                    request.result = outcome.Error(self._failed(each))
        except BaseException as exc:  # a bug here must not kill the thread or strand callers
            for request in batch:
                error = InternalError(f"sqlite provider failed: {exc!r}; please report it")
                error.__cause__ = exc
                request.result = outcome.Error(error)

    def _failed(self, exc: sqlite3.Error | StorageError) -> BaseException:
        """Translate a failed transaction's error; reconnect before the next one unless
        another connection's lock was all that stood in the way."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in _BUSY_CODES:
            self._reconnect = True
        return self._storage_error(exc)

    def _storage_error(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, sqlite3.Error):
            return exc
        error = StorageError(f"sqlite database {self.options.path!r}: {exc}")
        error.__cause__ = exc
        return error

    def _transaction(self, batch: list[_Request]) -> None:
        """Run *batch* in one transaction; raise if it did not commit."""
        if self._reconnect or self._sql is None:
            # The file may have been read-only, replaced or unreachable: start afresh.
            if self._sql is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._sql.close()
                self._sql = None
            self._sql = self._connect()
            self._reconnect = False
            self._reconnects += 1
        conn = self._sql
        self._transactions += 1
        conn.execute("BEGIN IMMEDIATE" if any(r.writes for r in batch) else "BEGIN")
        try:
            results: list[outcome.Outcome[Any]] = []
            for request in batch:
                try:
                    results.append(outcome.Value(request.fn(conn)))
                except sqlite3.Error:
                    raise
                except Exception as exc:  # the call's own answer (e.g. a stale ETag)
                    results.append(outcome.Error(exc))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        for request, result in zip(batch, results, strict=True):
            request.result = result


def new_etag() -> str:
    return uuid.uuid4().hex
