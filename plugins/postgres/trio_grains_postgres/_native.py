"""A PostgreSQL connection driven from Trio: libpq's non-blocking API through ``psycopg.pq``.

psycopg's own async API runs on asyncio only, but its ``psycopg.pq`` module is a documented,
loop-agnostic wrapper of libpq: :class:`TrioPgConnection` connects with
``PGconn.connect_start`` / ``connect_poll`` and runs a statement with ``send_prepare`` /
``send_query_prepared`` (or ``send_query_params``), ``flush``, ``consume_input`` and
``get_result``, waiting for the socket with :func:`trio.lowlevel.wait_readable` /
:func:`trio.lowlevel.wait_writable`. No thread, no second event loop: an operation costs
what the round trip costs, plus the work of one Trio task.

Parameters, results and errors: ``_values.py``.

A connection serves one task at a time (the pool in ``_database.py`` sees to that). One
whose socket fails, or that reports a FATAL error, is closed on the spot
(:attr:`TrioPgConnection.closed`) and never reused. A caller cancelled while its statement
is on the server still waits for the statement's outcome (see
:meth:`TrioPgConnection._outcome_after_cancel`): closing the connection instead would let
the statement run on, and perhaps commit after the caller has moved on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import psycopg
import trio
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ._values import (
    BINARY,
    COMMAND_OK,
    EMPTY_QUERY,
    TUPLES_OK,
    Param,
    Result,
    Statement,
    decode_result,
    encode_params,
    ends_session,
    error_from,
)

__all__ = ["TrioPgConnection"]

log = logging.getLogger("trio_grains_postgres")

_OK = pq.ConnStatus.OK
_POLL_OK = pq.PollingStatus.OK
_POLL_READING = pq.PollingStatus.READING
_POLL_WRITING = pq.PollingStatus.WRITING
_POLL_FAILED = pq.PollingStatus.FAILED
_SEVERITY = pq.DiagnosticField.SEVERITY_NONLOCALIZED
_CANCEL_GRACE = 0.05  # seconds a cancelled statement may take before it is cancelled too


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


async def _with_addresses(conninfo: str) -> str:
    """*conninfo* with its host names resolved into ``hostaddr`` by Trio.

    libpq resolves names with a blocking ``getaddrinfo`` inside ``connect_poll``, which
    would stop every task of the silo while DNS answers; :func:`trio.socket.getaddrinfo`
    does not. A name becomes one entry per address (``host=db,db hostaddr=10.0.0.1,
    10.0.0.2``), which libpq tries in order, as it would have; unix socket directories
    and IP addresses pass unchanged, as does a *conninfo* that names ``hostaddr``.
    Unresolvable names are left out (an error if nothing is left).
    """
    params = conninfo_to_dict(conninfo)
    if params.get("hostaddr") or os.environ.get("PGHOSTADDR"):
        return conninfo
    hosts = str(params.get("host") or os.environ.get("PGHOST") or "").split(",")
    ports = str(params.get("port") or os.environ.get("PGPORT") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return conninfo  # libpq's own error names the mismatch
    entries: list[tuple[str, str, str]] = []  # (host, port, address)
    failure: Exception | None = None
    looked_up = False
    for host, port in zip(hosts, ports, strict=True):
        if _is_address(host):
            entries.append((host, port, host))
            continue
        if not host or host.startswith(("/", "@")) or host[1:2] == ":":
            entries.append((host, port, ""))  # a unix socket directory, or libpq's default
            continue
        looked_up = True
        try:
            found = await trio.socket.getaddrinfo(
                host, port or 5432, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as exc:
            failure = exc
            continue
        addresses = dict.fromkeys(str(info[4][0]) for info in found)  # in order, no repeats
        entries.extend((host, port, address) for address in addresses)
    if not entries:
        raise psycopg.OperationalError(f"could not resolve host {hosts[0]!r}: {failure}")
    if not looked_up:
        return conninfo
    resolved = {
        "host": ",".join(host for host, _, _ in entries),
        "hostaddr": ",".join(address for _, _, address in entries),
    }
    if any(port for _, port, _ in entries):
        resolved["port"] = ",".join(port for _, port, _ in entries)
    return make_conninfo(conninfo, **resolved)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _finish(pgconn: pq.abc.PGconn) -> None:
    """Close *pgconn*'s socket the way Trio wants: tell its I/O manager first."""
    with contextlib.suppress(psycopg.Error, OSError, ValueError):
        trio.lowlevel.notify_closing(pgconn.socket)
    pgconn.notice_handler = None
    pgconn.finish()


@attrs.define(eq=False)
class TrioPgConnection:
    """One libpq connection used from Trio tasks, one task at a time. Autocommit.

    Open it with :meth:`connect`; :meth:`close` it (idempotent). After an operation that
    failed at the connection level or was cancelled it is :attr:`closed` already.
    """

    _pgconn: pq.abc.PGconn
    cancel_timeout: float = 10.0
    """How long a cancelled caller waits for its statement's outcome, at most."""
    _prepared: set[bytes] = attrs.field(factory=set)
    _closed: bool = False
    _doomed: bool = False  # the server said FATAL, or we sent a cancel request: not reused

    def __attrs_post_init__(self) -> None:
        self._pgconn.notice_handler = self._on_notice

    @classmethod
    async def connect(cls, conninfo: str, *, cancel_timeout: float = 10.0) -> TrioPgConnection:
        """Connect without blocking; raise :class:`psycopg.OperationalError` on failure.

        Takes no timeout: run it in a cancel scope (a cancelled attempt closes its socket).
        """
        target = await _with_addresses(
            make_conninfo(conninfo, client_encoding="UTF8", fallback_application_name="trio-grains")
        )
        pgconn = pq.PGconn.connect_start(target.encode())
        try:
            while True:
                if pgconn.status == pq.ConnStatus.BAD:
                    raise psycopg.OperationalError(
                        f"connection is bad: {pgconn.get_error_message('utf-8').strip()}"
                    )
                status = pgconn.connect_poll()
                if status == _POLL_OK:
                    break
                if status == _POLL_READING:
                    await trio.lowlevel.wait_readable(pgconn.socket)
                elif status == _POLL_WRITING:
                    await trio.lowlevel.wait_writable(pgconn.socket)
                elif status == _POLL_FAILED:
                    raise psycopg.OperationalError(
                        f"connection failed: {pgconn.get_error_message('utf-8').strip()}"
                    )
                else:  # pragma: no cover - libpq's ACTIVE is never returned by connect_poll
                    raise psycopg.InternalError(f"unexpected connect_poll status {status}")
            pgconn.nonblocking = 1
        except BaseException:
            _finish(pgconn)
            raise
        return cls(pgconn, cancel_timeout)

    @property
    def closed(self) -> bool:
        """True once closed, by :meth:`close` or by a failed or cancelled operation."""
        return self._closed

    @property
    def reusable(self) -> bool:
        """False once closed, or once a cancel request was sent to it."""
        return not (self._closed or self._doomed)

    @property
    def backend_pid(self) -> int:
        return self._pgconn.backend_pid

    def close(self) -> None:
        """Close the connection (a statement still running on the server runs to its end)."""
        if not self._closed:
            self._closed = True
            _finish(self._pgconn)

    def _on_notice(self, result: pq.abc.PGresult) -> None:
        # An idle connection gets the server's FATAL ("terminating connection due to
        # administrator command") as a notice, before the socket closes.
        if result.error_field(_SEVERITY) == b"FATAL":
            self._doomed = True

    def is_usable(self) -> bool:
        """Whether an idle connection can take a statement; cheap unless the server spoke.

        An idle connection has nothing to read unless the server sent something: most often
        that it is ending the session (shutdown, restart, ``pg_terminate_backend``), then
        EOF. That is read here (without waiting); a connection found broken is closed.
        """
        if self._closed:
            return False
        pgconn = self._pgconn
        try:
            while not self._doomed and pgconn.status == _OK and _readable(pgconn.socket):
                pgconn.consume_input()  # raises at EOF
                while pgconn.notifies() is not None:  # nobody LISTENs, but drain anyway
                    pass
        except (psycopg.Error, OSError):
            pass
        if self._doomed or pgconn.status != _OK:
            self.close()
            return False
        return True

    async def execute(self, statement: Statement | bytes, params: Sequence[Param] = ()) -> Result:
        """Run one statement (autocommit unless inside ``BEGIN``); return its result.

        A :class:`Statement` is prepared on this connection the first time it runs here;
        plain ``bytes`` run unprepared. Raises a :class:`psycopg.Error` (subclass by
        SQLSTATE) if the statement fails, or if the connection does (then it is closed).

        Cancelled once the statement is sent, it still learns the statement's outcome
        (:meth:`_outcome_after_cancel`) and returns it, as ``trio.to_thread.run_sync``
        does; the caller's next checkpoint raises :class:`trio.Cancelled`.
        """
        if self._closed:
            raise psycopg.OperationalError("the connection is closed")
        values, formats = encode_params(params)
        pgconn = self._pgconn
        if isinstance(statement, Statement):
            name = statement.name
            if name not in self._prepared:
                self._check(await self._run(pgconn.send_prepare, name, statement.text))
                self._prepared.add(name)
                await trio.lowlevel.checkpoint_if_cancelled()
            results = await self._run(pgconn.send_query_prepared, name, values, formats, BINARY)
        else:
            send = pgconn.send_query_params
            results = await self._run(send, statement, values, None, formats, BINARY)
        return self._check(results)

    async def _run(self, send: Callable[..., None], *args: Any) -> list[pq.abc.PGresult]:
        """Send a request and return all its results."""
        pgconn = self._pgconn
        try:
            send(*args)
            fd = pgconn.socket
            while pgconn.flush():
                # Cancelled here, the request is incomplete: the server never commits it.
                await trio.lowlevel.wait_writable(fd)
        except BaseException:
            self.close()
            raise
        try:
            return await self._results(fd)
        except trio.Cancelled:
            results = await self._outcome_after_cancel(fd)
            if results is None:
                raise
            return results
        except BaseException:
            self.close()
            raise

    async def _results(self, fd: int) -> list[pq.abc.PGresult]:
        pgconn = self._pgconn
        results: list[pq.abc.PGresult] = []
        while True:
            while pgconn.is_busy():
                await trio.lowlevel.wait_readable(fd)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                return results
            results.append(result)

    async def _outcome_after_cancel(self, fd: int) -> list[pq.abc.PGresult] | None:
        """The caller was cancelled with its statement on the server: wait for the outcome.

        Closing the connection instead would leave the statement running on the server,
        where it could still commit after the caller has read the record again. So: wait
        for the result (shielded), normally a fraction of a millisecond. If it takes longer
        than :data:`_CANCEL_GRACE` (a lock wait?), ask the server to cancel the statement
        (libpq 17's non-blocking cancel request) and wait for the result or the
        cancellation, for at most ``cancel_timeout`` seconds. Return the results if the
        statement completed; ``None`` (connection closed) if it was cancelled, or failed,
        or nothing came in time (then its outcome is unknown). A connection that was sent
        a cancel request is not reused: the request could hit its next statement.
        """
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(_CANCEL_GRACE):
                    return await self._results(fd)
                self._doomed = True
                with trio.move_on_after(self.cancel_timeout):
                    try:
                        await self._request_cancel()
                    except (psycopg.Error, OSError) as exc:
                        log.warning("cancelling a statement on the server failed: %s", exc)
                    results = await self._results(fd)
                    if all(result.status in (COMMAND_OK, TUPLES_OK) for result in results):
                        return results
            except (psycopg.Error, OSError):
                pass
        self.close()
        return None

    async def _request_cancel(self) -> None:
        if not psycopg.capabilities.has_cancel_safe():  # pragma: no cover - libpq < 17
            return  # the blocking PQcancel would stop every task: only wait for the result
        cancel = self._pgconn.cancel_conn()
        try:
            cancel.start()
            while (status := cancel.poll()) != _POLL_OK:
                if status == _POLL_READING:
                    await trio.lowlevel.wait_readable(cancel.socket)
                elif status == _POLL_WRITING:
                    await trio.lowlevel.wait_writable(cancel.socket)
                else:
                    raise psycopg.OperationalError(
                        f"cancel request failed: {cancel.get_error_message('utf-8').strip()}"
                    )
        finally:
            with contextlib.suppress(psycopg.Error, OSError, ValueError):
                trio.lowlevel.notify_closing(cancel.socket)
            cancel.finish()

    def _check(self, results: list[pq.abc.PGresult]) -> Result:
        """Raise the first error of *results*; else decode the last one."""
        for result in results:
            if result.status not in (COMMAND_OK, TUPLES_OK, EMPTY_QUERY):
                if ends_session(result) or self._pgconn.status != _OK:
                    self.close()
                raise error_from(result)
        if not results:
            self.close()
            raise psycopg.OperationalError("the server sent no result")
        return decode_result(results[-1])
