"""A provider's pool of Trio-native PostgreSQL connections (``_native.py``).

:class:`Database` holds up to ``pool_size`` :class:`~._native.TrioPgConnection`\\ s. An
operation (:meth:`Database.execute`) takes a slot of a :class:`trio.Semaphore` of
``pool_size`` (FIFO: waiting operations are served in order), takes the most recently used
idle connection (or opens one if there is none), runs one autocommit statement on it and
gives it back. Everything happens in the caller's task: no thread, no background task.

Health: a connection is checked before each use without a round trip
(:meth:`~._native.TrioPgConnection.is_usable`: the server only writes to an idle
connection to end it); one found broken, or broken during a statement, is closed and
dropped, and a new one is opened in its place by the next operation that needs it. So
after the server restarts, the next operation reconnects by itself.

``connect_timeout``: an operation that must open a connection keeps trying (with backoff,
0.05 s up to 1 s between attempts) for at most ``connect_timeout`` seconds, then fails
with :class:`~trio_grains.StorageError` naming the last error. That deadline is a cancel
scope on Trio's clock: under an autojump ``MockClock`` it passes as soon as every task
waits, including for the server's answer.

Cancellation: an operation cancelled while it waits for a slot or for a connection to
open touches nothing. Once its statement is sent, it waits (shielded) for the statement's
outcome and returns it; its next checkpoint raises :class:`trio.Cancelled`. A statement
slower than 0.05 s is cancelled on the server (and its connection then closed); see
:meth:`~._native.TrioPgConnection._outcome_after_cancel`. So the pool never hands out a
connection in the middle of a statement, and a cancelled write has happened or not when
the call ends.

Errors: every psycopg error becomes :class:`~trio_grains.StorageError` (chained) naming the
server by host, port, database and user (:func:`~._options.describe_target`), never the
password.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import attrs
import psycopg
import trio

from trio_grains import StorageError

from ._native import TrioPgConnection
from ._options import PostgresOptions
from ._schema import prepare_schema
from ._values import Param, Result, Statement

__all__ = ["Database", "open_database"]

log = logging.getLogger("trio_grains_postgres")

_FIRST_RETRY = 0.05  # seconds before the second connection attempt; doubles up to:
_MAX_RETRY = 1.0


@attrs.define(eq=False)
class Database:
    """The connections of one provider (at most ``options.pool_size``), used from Trio."""

    options: PostgresOptions
    name: str = "trio-grains"
    _idle: list[TrioPgConnection] = attrs.field(factory=list)
    _slots: trio.Semaphore = attrs.field(init=False)
    _closed: bool = False
    _opened: int = 0  # connections opened since the pool opened
    _lost: int = 0  # connections closed because they broke or were cancelled mid-statement
    _operations: int = 0

    def __attrs_post_init__(self) -> None:
        self._slots = trio.Semaphore(self.options.pool_size)

    @property
    def target(self) -> str:
        return self.options.target

    async def execute(
        self, what: str, statement: Statement | bytes, params: Sequence[Param] = ()
    ) -> Result:
        """Run one autocommit statement on a connection of the pool; *what* names it in errors.

        psycopg errors (from the server, the connection, or connecting) become
        :class:`~trio_grains.StorageError`.
        """
        slots = self._slots
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await slots.acquire()
        try:
            self._operations += 1
            conn = await self._checkout()
            try:
                return await conn.execute(statement, params)
            finally:
                self._checkin(conn)
        except psycopg.Error as exc:
            raise StorageError(_describe_error(self.target, what, exc)) from exc
        finally:
            slots.release()

    async def _checkout(self) -> TrioPgConnection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.is_usable():
                return conn
            self._lost += 1
            log.info("%s: a connection of %s was closed by the server", self.target, self.name)
        if self._closed:
            raise psycopg.OperationalError(f"the pool {self.name!r} is closed")
        return await self._connect()

    def _checkin(self, conn: TrioPgConnection) -> None:
        if not conn.reusable:
            conn.close()
            self._lost += 1
        elif self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    async def _connect(self) -> TrioPgConnection:
        """A new connection, within ``connect_timeout`` (retrying), else OperationalError."""
        timeout = self.options.connect_timeout
        last: psycopg.Error | None = None
        delay = _FIRST_RETRY
        with trio.move_on_after(timeout):
            while True:
                try:
                    conn = await TrioPgConnection.connect(self.options.dsn, cancel_timeout=timeout)
                except psycopg.OperationalError as exc:
                    last = exc
                    log.debug("%s: connecting failed: %s", self.target, exc)
                else:
                    self._opened += 1
                    return conn
                await trio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
        raise psycopg.OperationalError(
            f"no usable connection within {timeout:g} s (connect_timeout): the server is down "
            f"or unreachable, or refuses the connection; last error: {last or 'timed out'}"
        ) from last

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when given back."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def statistics(self) -> dict[str, int]:
        """Counters of the pool.

        ``pool_size``; ``pool_available`` (operations that could start now: slots not in
        use); ``requests_waiting`` (operations waiting for a slot); ``connections_idle``
        (open and idle); ``connections_num`` (opened since the pool opened);
        ``connections_lost`` (closed because they broke, the server ended them, or an
        operation was cancelled mid-statement); ``requests_num`` (operations run).
        """
        slots = self._slots.statistics()
        return {
            "pool_size": self.options.pool_size,
            "pool_available": self._slots.value,
            "requests_waiting": slots.tasks_waiting,
            "connections_idle": len(self._idle),
            "connections_num": self._opened,
            "connections_lost": self._lost,
            "requests_num": self._operations,
        }


def _describe_error(target: str, what: str, exc: psycopg.Error) -> str:
    message = str(exc).strip() or type(exc).__name__
    return f"{target}: {what} failed: {type(exc).__name__}: {message}"


async def _prepare(db: Database) -> None:
    """Connect once (no retry), prepare or check the schema, then fill the pool."""
    options = db.options
    what = "creating the schema" if options.create_schema else "checking the schema"
    versions: tuple[int, int] | None = None
    try:
        with trio.move_on_after(options.connect_timeout):
            conn = await TrioPgConnection.connect(
                options.dsn, cancel_timeout=options.connect_timeout
            )
            db._opened += 1
            versions = await prepare_schema(
                conn, options.schema, options.target, create=options.create_schema
            )
            db._idle.append(conn)
    except psycopg.Error as exc:
        hint = ""
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            hint = (
                ". The role may not create the schema: run `python -m trio_grains_postgres "
                "migrate` as one that may, and set create_schema = false"
            )
        elif isinstance(exc, psycopg.OperationalError):
            hint = ". Check the dsn option and that the server is running"
        raise StorageError(_describe_error(options.target, what, exc) + hint) from exc
    if versions is None:  # the deadline passed
        raise StorageError(
            f"{options.target}: {what} failed: no answer within {options.connect_timeout:g} s "
            "(connect_timeout). Check the dsn option and that the server is running"
        )
    if versions[0] != versions[1]:
        log.info(
            "schema %r in %s migrated from version %d to %d",
            options.schema,
            options.target,
            *versions,
        )

    failures: list[psycopg.Error] = []

    async def open_one() -> None:
        try:
            db._idle.append(await db._connect())
        except psycopg.Error as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(options.pool_size - 1):
            nursery.start_soon(open_one)
    if failures:
        what = f"opening {options.pool_size} connections (pool_size)"
        raise StorageError(_describe_error(options.target, what, failures[0])) from failures[0]


@contextlib.asynccontextmanager
async def open_database(options: PostgresOptions, name: str) -> AsyncIterator[Database]:
    """Prepare the schema, open ``options.pool_size`` connections, close them after.

    Raises :class:`~trio_grains.StorageError` if the server cannot be reached or the schema
    cannot be prepared. *name* names the pool in logs.
    """
    db = Database(options, name)
    try:
        await _prepare(db)
        yield db
    finally:
        db.close()
