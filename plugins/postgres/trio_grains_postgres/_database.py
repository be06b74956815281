"""A pool of psycopg connections, used from Trio through worker threads.

Why threads: psycopg 3's async API is asyncio-only (its locks, tasks and waiting functions
are asyncio's), Trio support is an open feature request (psycopg/psycopg#29, open since
2021; the anyio port, psycopg/psycopg#146, was closed unmerged), and driving its internal
generators from Trio would tie us to undocumented internals. asyncpg is asyncio-only too.
So each operation runs psycopg's sync API in a worker thread, on a connection of a
``psycopg_pool.ConnectionPool``; a :class:`trio.CapacityLimiter` of the pool's size
keeps at most one thread per connection. Every statement is a single autocommit
statement (one round trip, no transaction left open).

Cancellation: a call cancelled before its thread holds a connection returns at once
without touching the database (also while it waits for a connection to a server that is
down). Once the statement is sent, the caller waits for it, as with
``trio.to_thread.run_sync``'s default ``abandon_on_cancel=False``, and gets its result
(its next checkpoint raises ``trio.Cancelled``): the statement either happened or did
not, and the connection goes back to the pool idle, never mid-transaction.

Errors: every psycopg / pool error becomes :class:`~trio_grains.StorageError` (chained)
naming the server by host, port, database and user (:func:`describe_target`), never the
password. A connection the server closed is noticed before use (:func:`_check`) and
replaced; the pool reconnects in the background with backoff, so the provider recovers
by itself when the server comes back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias, TypeVar

import attrs
import outcome
import psycopg
import trio
from psycopg_pool import ConnectionPool, PoolTimeout

from trio_grains import StorageError

from ._options import PostgresOptions
from ._schema import check_version, migrate

__all__ = ["Connection", "Database", "open_database"]

log = logging.getLogger("trio_grains_postgres")

T = TypeVar("T")
Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]

_WAIT_SLICE = 0.25  # how often a thread waiting for a connection looks for cancellation
_RECONNECT_GIVE_UP = 30.0  # the pool's reconnect_timeout: bounds its backoff between attempts


class _Cancelled(Exception):
    """Raised in the worker thread when the caller was cancelled before the statement ran."""


class _Call:
    """What the worker thread and the waiting task share: whether the caller was cancelled."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


async def _run_in_thread(work: Callable[[], T], call: _Call) -> T:
    """Run *work* in a worker thread; on cancellation, tell it through *call* and wait.

    ``trio.to_thread.run_sync`` with ``abandon_on_cancel=False`` waits too, but gives the
    thread no way to learn that nobody wants its result any more.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[T]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, outcome.Value(result))

    trio.lowlevel.start_thread_soon(work, deliver, name="trio-grains-postgres")

    def abort(_: Any) -> trio.lowlevel.Abort:
        call.cancelled = True
        return trio.lowlevel.Abort.FAILED  # keep waiting: the thread reschedules us

    result: outcome.Outcome[T] = await trio.lowlevel.wait_task_rescheduled(abort)
    if isinstance(result, outcome.Error) and isinstance(result.error, _Cancelled):
        await trio.lowlevel.checkpoint()  # raises the pending trio.Cancelled
        raise StorageError("the operation was cancelled before it started")  # not reached
    # Like trio.to_thread.run_sync: a result is returned even if the caller was cancelled
    # meanwhile (the write happened, and the caller learns its ETag); its next checkpoint
    # raises trio.Cancelled.
    return result.unwrap()


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


def _check(conn: Connection) -> None:
    """The pool's check before handing out a connection; cheap when nothing happened.

    An idle connection has nothing to read unless the server sent something: usually that
    it is terminating the session (restart, shutdown, ``pg_terminate_backend``). Only then
    is it checked with an empty query, which costs a round trip.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    if _readable(conn.fileno()):
        ConnectionPool.check_connection(conn)


@attrs.define(eq=False)
class Database:
    """The connections of one provider: run a blocking function on one, from Trio."""

    options: PostgresOptions
    _pool: ConnectionPool[Connection]
    _limiter: trio.CapacityLimiter

    @property
    def target(self) -> str:
        return self.options.target

    async def run(self, what: str, fn: Callable[[Connection], T]) -> T:
        """Call ``fn(connection)`` in a worker thread; *what* names it in errors.

        psycopg errors become :class:`~trio_grains.StorageError`; any other exception of
        *fn* (e.g. :class:`~trio_grains.InconsistentStateError`) passes through.
        """
        call = _Call()
        try:
            async with self._limiter:
                return await _run_in_thread(functools.partial(self._work, fn, call), call)
        except psycopg.Error as exc:
            raise StorageError(_describe_error(self.target, what, exc)) from exc

    def _work(self, fn: Callable[[Connection], T], call: _Call) -> T:
        conn = self._getconn(call)
        try:
            if call.cancelled:
                raise _Cancelled
            return fn(conn)
        finally:
            self._pool.putconn(conn)

    def _getconn(self, call: _Call) -> Connection:
        timeout = self.options.connect_timeout
        deadline = time.monotonic() + timeout
        while True:
            if call.cancelled:
                raise _Cancelled
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PoolTimeout(
                    f"no usable connection within {timeout:g} s (connect_timeout): the "
                    "server is down or unreachable, or refuses the connection; the pool "
                    "keeps reconnecting in the background"
                )
            try:
                return self._pool.getconn(timeout=min(remaining, _WAIT_SLICE))
            except PoolTimeout:
                continue

    def statistics(self) -> dict[str, int]:
        """The pool's counters (``pool_size``, ``pool_available``, ``connections_lost``...)."""
        return self._pool.get_stats()


def _describe_error(target: str, what: str, exc: psycopg.Error) -> str:
    message = str(exc).strip() or type(exc).__name__
    return f"{target}: {what} failed: {type(exc).__name__}: {message}"


def _connect_once(options: PostgresOptions) -> Connection:
    return psycopg.connect(
        options.dsn,
        connect_timeout=max(2, round(options.connect_timeout)),
        fallback_application_name="trio-grains",
    )


def prepare_schema(options: PostgresOptions) -> None:
    """Create/upgrade the schema (``create_schema``) or check its version (blocking)."""
    try:
        with _connect_once(options) as conn:
            if options.create_schema:
                before, after = migrate(conn, options.schema)
                if before != after:
                    log.info(
                        "schema %r in %s migrated from version %d to %d",
                        options.schema,
                        options.target,
                        before,
                        after,
                    )
            else:
                check_version(conn, options.schema, options.target)
    except psycopg.Error as exc:
        hint = ""
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            hint = (
                ". The role may not create the schema: run `python -m trio_grains_postgres "
                "migrate` as one that may, and set create_schema = false"
            )
        elif isinstance(exc, psycopg.OperationalError):
            hint = ". Check the dsn option and that the server is running"
        what = "creating the schema" if options.create_schema else "checking the schema"
        raise StorageError(_describe_error(options.target, what, exc) + hint) from exc


@contextlib.asynccontextmanager
async def open_database(options: PostgresOptions, name: str) -> AsyncIterator[Database]:
    """Prepare the schema, open a pool of ``options.pool_size`` connections, close it after.

    Raises :class:`~trio_grains.StorageError` if the server cannot be reached or the schema
    cannot be prepared. *name* names the pool in psycopg's logs.
    """
    await trio.to_thread.run_sync(prepare_schema, options)
    pool: ConnectionPool[Connection] = ConnectionPool(
        options.dsn,
        kwargs={
            "autocommit": True,
            "connect_timeout": max(2, round(options.connect_timeout)),
            "fallback_application_name": "trio-grains",
        },
        min_size=options.pool_size,
        max_size=options.pool_size,
        open=False,
        check=_check,
        name=name,
        timeout=options.connect_timeout,
        reconnect_timeout=_RECONNECT_GIVE_UP,
    )
    try:
        try:
            await trio.to_thread.run_sync(
                functools.partial(pool.open, wait=True, timeout=options.connect_timeout)
            )
        except psycopg.Error as exc:
            raise StorageError(
                _describe_error(options.target, "opening the connection pool", exc)
            ) from exc
        yield Database(options, pool, trio.CapacityLimiter(options.pool_size))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pool.close)
