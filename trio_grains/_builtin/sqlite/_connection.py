# How calls run, chosen by measurement. `benchmarks/run.py storage`: writes/s of 200-byte
# states through grains, each a compare-and-set; "floor" is a raw sqlite3 loop on one
# thread, one transaction per write (it blocks its thread: a baseline, not an option). WAL,
# synchronous=NORMAL, 2-core VM, Python 3.11, SQLite 3.40; best of 5 rounds, median of 3
# runs (the middle rows: the variants alternating in one process); quiet machine (under
# load, runs vary by 30% and more):
#
#                                                   1 writer (ratio)   100 writers (ratio)
#   floor: raw sqlite3 loop                           61,000-72,000       61,000-72,000
#   own thread, group commit (the previous design)     6,500  (0.10)     60,000  (0.88)
#   inline at once, schedule point after each call    38,000  (0.60)     43,000  (0.67)
#   inline, gathered, schedule point before each       33,000  (0.54)     74,000  (1.11)
#   inline, gathered; a lone caller yields per ms      42,000  (0.66)     73,000  (1.13) <-
#
# A thread hand-off each way (queue, wake the thread, wake Trio through its token) costs
# several times a WAL commit that does not flush: a lone writer paid two per write. On the
# Trio thread a short call costs what sqlite3 costs, plus the Trio checkpoint; so it runs
# there whenever that cannot block: the commit must not flush (WAL with synchronous=NORMAL;
# not FULL), nothing may wait for a lock (busy timeout 0; on SQLITE_BUSY the call runs again
# in the thread, which waits), checkpoints (which flush) run in the thread (automatic ones
# are off), and so does the first write after one (it restarts the WAL, flushing its
# header). The leader of a call yields once before running so that calls of other tasks
# join its transaction (group commit on the Trio thread; past INLINE_MAX_BATCH calls or
# INLINE_MAX_BYTES, the thread takes over). A schedule point costs about a quarter of a
# write: a task calling alone, again and again, makes one per SCHEDULE_QUANTUM (Trio's
# issue python-trio/trio#1757 proposes the same for its checkpoints); every call is a
# cancel point.
#
# Verified with `strace -f -e fsync,fdatasync` on a lone writer: every flush is made by the
# connection's thread, none by the Trio thread.
"""The connection of the sqlite providers: short calls on the Trio thread, the rest in the
connection's own thread with group commit.

May import: layers 0-7 (the contracts of the providers it serves) and ``_options``. Not the
sqlite providers beside it, which build on it, nor the plugin manager or the silo.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import attrs
import outcome
import trio

from ..._exceptions import InternalError
from ..._storage import StorageError
from ._options import MEMORY, SqliteOptions, connect, inline_ok

log = logging.getLogger("trio_grains.sqlite")

T = TypeVar("T")

MAX_BATCH: Final = 512
"""The most calls folded into one transaction by the thread (bounds the last one's wait)."""
INLINE_MAX_BATCH: Final = 128
"""The most calls folded into one transaction on the Trio thread."""
INLINE_MAX_BYTES: Final = 64 * 1024
"""The most bytes a call, or the calls of one transaction, may write on the Trio thread."""
CHECKPOINT_PAGES: Final = 1000
"""Pages written to the WAL between checkpoints (SQLite's ``wal_autocheckpoint`` default)."""
_PAGE: Final = 4096
SCHEDULE_QUANTUM: Final = 0.001
"""A lone task calling in a loop makes a schedule point at most this often (seconds)."""

_BUSY_CODES: Final = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@attrs.frozen
class SqliteStatistics:
    """What a provider's connection has done.

    ``calls``: calls answered; ``inline_calls``: those of them answered on the Trio thread;
    ``transactions``: transactions committed or rolled back (fewer than ``calls`` when
    concurrent calls were grouped; a transaction that met another connection's lock on the
    Trio thread, and ran again in the thread, counts twice); ``largest_batch``: most calls
    in one transaction; ``checkpoints``: WAL checkpoints run by the thread;
    ``reconnects``: times the connection was reopened after an error (say, the file was
    read-only); ``journal_mode``: ``"wal"`` (``"memory"`` for ``:memory:``).
    """

    path: str
    calls: int
    inline_calls: int
    transactions: int
    largest_batch: int
    checkpoints: int
    reconnects: int
    journal_mode: str


@attrs.define(eq=False)
class _Request:
    fn: Callable[[sqlite3.Connection], Any]
    writes: bool
    size: int
    task: trio.lowlevel.Task
    result: outcome.Outcome[Any] | None = None


_STOP: Final = object()
_CHECKPOINT: Final = object()


@attrs.define(eq=False)
class SqliteConnection:
    """One sqlite3 connection, used by the Trio thread for short calls while its own thread
    is idle, and by its own thread for everything else, in transactions."""

    options: SqliteOptions
    schema: Sequence[str]
    component: str
    _queue: queue.SimpleQueue[_Request | object] = attrs.field(factory=queue.SimpleQueue)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _token: trio.lowlevel.TrioToken | None = attrs.field(default=None, init=False)
    _open: bool = attrs.field(default=False, init=False)
    # Trio side:
    _in_thread: int = attrs.field(default=0, init=False)
    _gathering: list[_Request] = attrs.field(factory=list, init=False)
    _gathered_bytes: int = attrs.field(default=0, init=False)
    _wal_pages: int = attrs.field(default=0, init=False)
    _checkpoint_queued: bool = attrs.field(default=False, init=False)
    _restart_due: bool = attrs.field(default=True, init=False)
    _lone: trio.lowlevel.Task | None = attrs.field(default=None, init=False)
    _yielded_at: float = attrs.field(default=0.0, init=False)
    # Whoever holds the connection (the thread while _in_thread > 0, else the Trio thread):
    _sql: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _reconnect: bool = attrs.field(default=False, init=False)
    _inline_ok: bool = attrs.field(default=False, init=False)
    _busy_ms: int = attrs.field(default=0, init=False)
    _calls: int = attrs.field(default=0, init=False)
    _inline_calls: int = attrs.field(default=0, init=False)
    _transactions: int = attrs.field(default=0, init=False)
    _largest_batch: int = attrs.field(default=0, init=False)
    _checkpoints: int = attrs.field(default=0, init=False)
    _journal_mode: str = attrs.field(default="", init=False)
    _reconnects: int = attrs.field(default=0, init=False)

    def statistics(self) -> SqliteStatistics:
        return SqliteStatistics(
            path=self.options.path,
            calls=self._calls,
            inline_calls=self._inline_calls,
            transactions=self._transactions,
            largest_batch=self._largest_batch,
            checkpoints=self._checkpoints,
            reconnects=self._reconnects,
            journal_mode=self._journal_mode,
        )

    # -- Trio side ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        opened = _Request(lambda conn: None, False, 0, trio.lowlevel.current_task())
        self._thread = threading.Thread(
            target=self._serve,
            args=(opened,),
            name=f"trio-grains sqlite {self.options.path}",
            daemon=True,
        )
        self._in_thread = 1
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
        with trio.CancelScope(shield=True):
            while self._gathering:  # its leader runs it at its next step, inline or not
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._queue.put(_STOP)
            await trio.to_thread.run_sync(self._thread.join)
        self._thread = None

    # KI-protected: Ctrl-C must not land between a commit and the rescheduling of the calls
    # that joined it (they wait uncancellably); Trio delivers it at the next checkpoint.
    @trio.lowlevel.enable_ki_protection
    async def call(
        self, fn: Callable[[sqlite3.Connection], T], *, writes: bool, size: int | None = 0
    ) -> T:
        """Run ``fn(connection)`` inside a transaction; its result or error.

        *size*: about how many bytes the call writes (or reads, beyond a few rows); ``None``
        if it has no bound, like a scan of a table: such a call always runs in the thread.
        The call is a cancel point before it starts, never after.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._open:
            raise StorageError(f"sqlite database {self.options.path!r}: the provider is closed")
        task = trio.lowlevel.current_task()
        request = _Request(fn, writes, size or 0, task)
        if size is None or not self._may_inline(request):
            self._lone = None
            self._send([request])
            return await self._wait()  # type: ignore[no-any-return]
        if self._gathering:  # a leader runs these at its next step: join it
            self._gathering.append(request)
            self._gathered_bytes += request.size
            return await self._wait()  # type: ignore[no-any-return]
        # Lead: run this call, and those that join it before our next step, in one
        # transaction here (unless the connection is busy by then).
        if self._lone is task and time.perf_counter() - self._yielded_at < SCHEDULE_QUANTUM:
            batch = [request]  # see SCHEDULE_QUANTUM
        else:
            self._gathering = [request]
            self._gathered_bytes = request.size
            await trio.lowlevel.cancel_shielded_checkpoint()  # others' calls join meanwhile
            self._yielded_at = time.perf_counter()
            batch, self._gathering = self._gathering, []
            writes = any(r.writes for r in batch)
        if not self._free(writes) or not self._run_inline(batch, writes):
            self._lone = None
            self._send(batch)
            return await self._wait()  # type: ignore[no-any-return]
        self._lone = task if len(batch) == 1 else None
        for other in batch[1:]:
            assert other.result is not None
            trio.lowlevel.reschedule(other.task, other.result)
        assert request.result is not None
        return request.result.unwrap()  # type: ignore[no-any-return]

    def _free(self, writes: bool) -> bool:
        """Whether the Trio thread may use the connection now: it is in WAL mode with
        ``synchronous=NORMAL`` (or in memory), so a commit writes to the OS and never waits
        for the disk, and the thread has nothing to do with it (it owns it while it has)."""
        if not self._inline_ok or self._in_thread or self._reconnect or self._sql is None:
            return False
        # The first write after a checkpoint restarts the WAL, which flushes its header.
        return not (writes and self._restart_due)

    def _may_inline(self, request: _Request) -> bool:
        if not self._free(request.writes):
            return False
        if self._gathering:
            return (
                len(self._gathering) < INLINE_MAX_BATCH
                and self._gathered_bytes + request.size <= INLINE_MAX_BYTES
            )
        return request.size <= INLINE_MAX_BYTES

    def _run_inline(self, batch: list[_Request], writes: bool) -> bool:
        """Run *batch* in one transaction here; False if it did not commit: the thread runs
        it again, waiting for another connection's lock, and reports any other error."""
        conn = self._sql
        assert conn is not None
        try:
            if self._busy_ms:
                conn.execute("PRAGMA busy_timeout = 0")
                self._busy_ms = 0
            self._transaction(batch, writes)
        except sqlite3.Error:
            return False
        except BaseException as exc:  # a bug here must not strand the callers
            self._internal_error(batch, exc)
        self._inline_calls += len(batch)
        self._answered(batch, by_thread=False)
        return True

    def _send(self, batch: list[_Request]) -> None:
        self._in_thread += len(batch)
        for request in batch:
            self._queue.put(request)

    async def _wait(self) -> Any:
        # Not cancellable: the thread cannot be interrupted, so the caller waits for the
        # outcome (as trio.to_thread.run_sync does by default) and Trio delivers the
        # cancellation at its next checkpoint.
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def _started(self, opened: _Request) -> None:
        self._in_thread -= 1
        assert opened.result is not None
        trio.lowlevel.reschedule(opened.task, opened.result)

    def _deliver(self, batch: list[_Request]) -> None:
        self._in_thread -= len(batch)
        self._answered(batch, by_thread=True)
        for request in batch:
            assert request.result is not None
            trio.lowlevel.reschedule(request.task, request.result)

    def _answered(self, batch: list[_Request], *, by_thread: bool) -> None:
        """Count what *batch* wrote to the WAL, and ask the thread for a checkpoint when it
        is due (automatic checkpoints are off when calls may run on the Trio thread)."""
        self._calls += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))
        for request in batch:
            if request.writes and isinstance(request.result, outcome.Value):
                self._wal_pages += 1 + request.size // _PAGE
                if by_thread:
                    self._restart_due = False  # the thread wrote, and restarted the WAL
        if (
            self._inline_ok
            and self.options.path != MEMORY
            and self._wal_pages >= CHECKPOINT_PAGES
            and not self._checkpoint_queued
        ):
            self._wal_pages = 0
            self._checkpoint_queued = True
            self._in_thread += 1
            self._queue.put(_CHECKPOINT)

    def _checkpointed(self, complete: bool) -> None:
        self._in_thread -= 1
        self._checkpoint_queued = False
        if complete:
            self._restart_due = True

    # -- thread side -------------------------------------------------------------------------

    def _serve(self, opened: _Request) -> None:
        assert self._token is not None
        try:
            self._sql = self._connect()
        except BaseException as exc:
            opened.result = outcome.Error(self._storage_error(exc))
            self._token.run_sync_soon(self._started, opened)
            return
        opened.result = outcome.Value(None)
        self._token.run_sync_soon(self._started, opened)
        try:
            after: object = None
            while after is not _STOP:
                first = self._queue.get()
                if not isinstance(first, _Request):
                    after = first
                else:
                    batch = [first]
                    after = None
                    while len(batch) < MAX_BATCH:
                        try:
                            more = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if not isinstance(more, _Request):
                            after = more
                            break
                        batch.append(more)
                    self._run_batch(batch)
                    self._token.run_sync_soon(self._deliver, batch)
                if after is _CHECKPOINT:
                    self._token.run_sync_soon(self._checkpointed, self._checkpoint())
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
        conn, self._journal_mode = connect(self.options, self.schema, self.component)
        self._busy_ms = round(self.options.busy_timeout * 1000)
        self._inline_ok = inline_ok(self.options, self._journal_mode)
        return conn

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database (PASSIVE: waits for no one); True if all of it
        was, so that the next write restarts the WAL."""
        if self._sql is None or self._reconnect:
            return False
        try:
            busy, frames, copied = self._sql.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except Exception as exc:  # the next one may succeed; this thread must go on serving
            log.warning("sqlite database %r: checkpoint failed: %s", self.options.path, exc)
            return False
        self._checkpoints += 1
        return bool(busy == 0 and frames == copied)

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            self._thread_transaction(batch)
        except (sqlite3.Error, StorageError) as exc:
            if len(batch) == 1:
                batch[0].result = outcome.Error(self._failed(exc))
                return
            # One call's failure must not fail its neighbours: retry each on its own.
            for request in batch:
                try:
                    self._thread_transaction([request])
                except (sqlite3.Error, StorageError) as each:
                    request.result = outcome.Error(self._failed(each))
        except BaseException as exc:  # a bug here must not kill the thread or strand callers
            self._internal_error(batch, exc)

    @staticmethod
    def _internal_error(batch: list[_Request], exc: BaseException) -> None:
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

    def _thread_transaction(self, batch: list[_Request]) -> None:
        """Run *batch* in one transaction in the thread, waiting up to ``busy_timeout`` for
        another connection's lock; raise if it did not commit."""
        if self._reconnect or self._sql is None:
            # The file may have been read-only, replaced or unreachable: start afresh.
            if self._sql is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._sql.close()
                self._sql = None
            self._sql = self._connect()
            self._reconnect = False
            self._reconnects += 1
        wait_ms = round(self.options.busy_timeout * 1000)
        if self._busy_ms != wait_ms:
            self._sql.execute(f"PRAGMA busy_timeout = {wait_ms}")
            self._busy_ms = wait_ms
        self._transaction(batch, any(r.writes for r in batch))

    def _transaction(self, batch: list[_Request], writes: bool) -> None:
        """Run *batch* in one transaction (*writes*: if any call in it does); raise if it
        did not commit."""
        conn = self._sql
        assert conn is not None
        self._transactions += 1
        conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
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
    """A fresh ETag: 128 random bits as 32 hex digits (``uuid4().hex`` costs 5 times more)."""
    return os.urandom(16).hex()
