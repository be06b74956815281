"""The engine under :class:`~trio_grains_nats.client.Connection`: buffers, tasks, reconnection.

A supervisor task owns the live server stream; for each stream it runs a *reader*
(``receive_some`` fed to :meth:`Wire._parse`, which hands each message to its request or
subscription as it parses it), a *writer* (publishers append to one ``bytearray``; the
writer swaps it out and sends it with one ``send_all``, so a burst of publishes costs one
syscall) and a *pinger* (keep-alive PINGs; too many unanswered ones mean a stale
connection). When the stream breaks, the supervisor reconnects across the server list,
resubscribes, and the writer then sends what was buffered meanwhile.

Replies to requests share one wildcard subscription ``_INBOX.<nuid>.*``: a request
registers its token in ``_requests`` and parks its task; the reader reschedules it.
"""

from __future__ import annotations

import collections
import json
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import outcome
import trio
from nats.errors import ProtocolError
from nats.nuid import NUID
from trio.lowlevel import ParkingLot, Task, reschedule

from ._exceptions import (
    AuthorizationError,
    ConnectionClosedError,
    NatsConnectionError,
    ProtocolViolationError,
    StaleConnectionError,
)
from ._handshake import Credentials, ServerAddress, handshake
from ._msg import Msg, decode_headers, encode_headers
from ._subscription import _Interest

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Wire"]

_BAD_SUBJECT = re.compile(r"[\s]")
_INBOX_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_MAX_CONTROL_LINE = 4096  # the server's default max_control_line
_READ_SIZE = 256 * 1024
MAX_SUBJECT_BYTES = 2048
"""The longest subject published or subscribed to (the server\'s control line is 4 KiB)."""
_CONN_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ssl.SSLError,
    ProtocolError,
    NatsConnectionError,
)


class _Pong:
    """A flush() waiting for the PONG of its PING."""

    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok = False


class Wire:
    """The connection's state and machinery; the public methods are on ``Connection``."""

    def __init__(
        self,
        servers: list[ServerAddress],
        *,
        credentials: Credentials,
        tls: ssl.SSLContext | None,
        name: str | None,
        echo: bool,
        max_pending_bytes: int,
        ping_interval: float,
        max_outstanding_pings: int,
        reconnect: bool,
        reconnect_wait: float,
        max_reconnect_attempts: int,
        inbox_prefix: str = "_INBOX",
    ) -> None:
        if not _INBOX_PREFIX.fullmatch(inbox_prefix):
            raise ValueError(
                f"bad inbox_prefix {inbox_prefix!r}: subject tokens of letters, digits, "
                "'-', '_', joined by '.' (e.g. '_INBOX_web')"
            )
        self._servers = servers
        self._credentials = credentials
        self._tls = tls
        self._name = name
        self._echo = echo
        self._max_pending_bytes = max_pending_bytes
        self._ping_interval = ping_interval
        self._max_outstanding_pings = max_outstanding_pings
        self._reconnect = reconnect
        self._reconnect_wait = reconnect_wait
        self._max_reconnect_attempts = max_reconnect_attempts
        self.info: dict[str, Any] = {}
        self._server: ServerAddress | None = None
        self._stream: trio.abc.Stream | None = None
        self._connected = False
        self._closed = False
        self._draining = False
        self._fatal_error: BaseException | None = None
        self._lost_reason: BaseException | None = None
        # writer state
        self._buf = bytearray()
        self._writer_idle = False
        self._writer_lot = ParkingLot()
        self._room_lot = ParkingLot()
        self._connected_lot = ParkingLot()
        self._subject_cache: dict[str, bytes] = {}
        # PING/PONG
        self._pongs: collections.deque[_Pong | None] = collections.deque()
        self._pings_in_buf = 0
        self._pings_outstanding = 0
        # subscriptions and the request inbox
        self._nuid = NUID()
        self._sid = 0
        self._subs: dict[int, _Interest] = {}
        #: where replies to this connection's requests and JetStream pulls arrive: under
        #: ``<inbox_prefix>.``, so a server can let each user subscribe to its own only
        self.inbox_root = inbox_prefix
        self._inbox_prefix = f"{inbox_prefix}." + self._nuid.next().decode() + "."
        self._inbox_prefix_len = len(self._inbox_prefix)
        self._inbox_prefix_b = self._inbox_prefix.encode()
        self._inbox_sid = self._next_sid()
        self._requests: dict[bytes, Any] = {}
        self._public = cast("Connection", self)  # what messages reply through
        self._req_seq = 0
        # counters
        self._in_msgs = self._out_msgs = self._in_bytes = self._out_bytes = 0
        self._reconnects = 0
        self._max_payload = 1024 * 1024

    # --- writing ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._draining:
            state = "draining" if self._draining and not self._closed else "closed"
            why = f" ({self._fatal_error})" if self._fatal_error is not None else ""
            raise ConnectionClosedError(
                f"the NATS connection is {state}{why}: open a new one with connect()"
            ) from self._fatal_error

    def _encode_subject(self, subject: str) -> bytes:
        subj = self._subject_cache.get(subject)
        if subj is None:
            if not subject or _BAD_SUBJECT.search(subject):
                raise ValueError(f"bad subject {subject[:80]!r}: it must be non-empty, no spaces")
            try:
                subj = subject.encode()
            except UnicodeEncodeError:
                raise ValueError(f"bad subject {subject[:80]!r}: it is not text") from None
            if len(subj) > MAX_SUBJECT_BYTES:
                # The server closes a connection whose protocol line passes its
                # max_control_line (4 KiB): every other user of the connection would pay.
                raise ValueError(
                    f"subject {subject[:40]!r}... is {len(subj)} bytes, more than "
                    f"{MAX_SUBJECT_BYTES}: use shorter keys (hash long ones)"
                )
            if len(self._subject_cache) > 10_000:
                self._subject_cache.clear()
            self._subject_cache[subject] = subj
        return subj

    def _write_pub(
        self,
        subject: str,
        reply: str | bytes | None,
        payload: bytes,
        headers: Mapping[str, str] | None,
    ) -> None:
        if self._closed or self._draining:
            self._check_open()
        subj = self._subject_cache.get(subject) or self._encode_subject(subject)
        size = len(payload)
        if size > self._max_payload:
            raise ValueError(
                f"payload of {size} bytes exceeds the server's max_payload "
                f"({self._max_payload}): split it, or raise max_payload on the server"
            )
        buf = self._buf
        if headers:
            hdr = encode_headers(headers)
            if reply:
                buf += b"HPUB %s %s %d %d\r\n" % (
                    subj,
                    reply if type(reply) is bytes else self._encode_subject(reply),  # type: ignore[arg-type]
                    len(hdr),
                    len(hdr) + size,
                )
            else:
                buf += b"HPUB %s %d %d\r\n" % (subj, len(hdr), len(hdr) + size)
            buf += hdr
        elif reply:
            if type(reply) is not bytes:  # our own inbox replies come encoded (and unique)
                reply = self._encode_subject(reply)  # type: ignore[arg-type]
            buf += b"PUB %s %s %d\r\n" % (subj, reply, size)
        else:
            buf += b"PUB %s %d\r\n" % (subj, size)
        buf += payload
        buf += b"\r\n"
        self._out_msgs += 1
        self._out_bytes += size
        if self._writer_idle:
            self._writer_idle = False
            self._writer_lot.unpark()

    def _write(self, data: bytes) -> None:
        self._buf += data
        if self._writer_idle:
            self._writer_idle = False
            self._writer_lot.unpark()

    async def _wait_for_room(self) -> None:
        while len(self._buf) >= self._max_pending_bytes:
            self._check_open()
            await self._room_lot.park()
        self._check_open()

    async def _wait_connected(self) -> None:
        while not self._connected:
            if self._closed:
                self._check_open()
            await self._connected_lot.park()

    def _next_sid(self) -> int:
        self._sid += 1
        return self._sid

    @staticmethod
    def _sub_command(subj: bytes, queue: str | None, sid: int) -> bytes:
        if queue:
            return b"SUB %s %s %d\r\n" % (subj, queue.encode(), sid)
        return b"SUB %s %d\r\n" % (subj, sid)

    # --- parsing what the server sends -------------------------------------------------

    async def _parse(self, buf: bytes) -> tuple[bytes, int]:
        """Handle every complete protocol message at the start of *buf*; return the rest
        (an incomplete message) and how many bytes that message needs in all (0 when its
        control line is incomplete).

        Messages are dispatched as they are parsed, without an ``await`` unless a
        subscription's buffer is full (nats-py's ``Parser`` awaits a callback per message
        and deletes each from the front of a ``bytearray``: twice the cost per message).
        """
        end = len(buf)
        pos = 0
        find = buf.find
        while pos < end:
            eol = find(b"\r\n", pos, pos + _MAX_CONTROL_LINE)
            if eol < 0:
                if end - pos >= _MAX_CONTROL_LINE:
                    raise ProtocolError("nats: a control line longer than 4 KiB")
                return buf[pos:], 0
            if buf.startswith(b"MSG ", pos):
                args = buf[pos + 4 : eol].split()
                if len(args) == 3:
                    subject, sid_text, size_text = args
                    reply = b""
                elif len(args) == 4:
                    subject, sid_text, reply, size_text = args
                else:
                    raise ProtocolError("nats: malformed MSG")
                header_text = b"0"
            elif buf.startswith(b"HMSG ", pos):
                args = buf[pos + 5 : eol].split()
                if len(args) == 4:
                    subject, sid_text, header_text, size_text = args
                    reply = b""
                elif len(args) == 5:
                    subject, sid_text, reply, header_text, size_text = args
                else:
                    raise ProtocolError("nats: malformed HMSG")
            else:
                line = buf[pos:eol]
                pos = eol + 2
                self._control_line(line)
                continue
            try:
                sid = int(sid_text)
                size = int(size_text)
                header_size = int(header_text)
            except ValueError:
                raise ProtocolError("nats: malformed MSG (a number is not one)") from None
            if not 0 <= header_size <= size:
                raise ProtocolError("nats: malformed MSG (sizes)")
            start = eol + 2
            stop = start + size
            if stop + 2 > end:
                return buf[pos:], stop + 2 - pos
            pos = stop + 2
            if header_size:
                headers: bytes | None = buf[start : start + header_size]
                data = buf[start + header_size : stop]
            else:
                headers = None
                data = buf[start:stop]
            self._in_msgs += 1
            self._in_bytes += len(data)
            if sid == self._inbox_sid:
                waiter = self._requests.pop(subject[self._inbox_prefix_len :], None)
                if waiter is None:
                    continue
                msg = self._make_msg(subject, reply, data, headers)
                if type(waiter) is Task:
                    reschedule(waiter, outcome.Value(msg))
                else:
                    waiter[0]._on_reply(waiter[1], msg)
                continue
            sub = self._subs.get(sid)
            if sub is not None and not sub._deliver_nowait(subject, reply, data, headers):
                await sub._deliver(subject, reply, data, headers)  # its buffer is full
        return b"", 0

    def _control_line(self, line: bytes) -> None:
        """PING, PONG, +OK, -ERR or INFO (anything else is a protocol error)."""
        op = line[:5].rstrip().upper()
        if op == b"PING":
            self._write(b"PONG\r\n")
        elif op == b"PONG":
            self._pings_outstanding = 0
            if self._pongs:
                pong = self._pongs.popleft()
                if pong is not None:
                    pong.ok = True
                    pong.event.set()
        elif op == b"+OK":
            pass
        elif op == b"-ERR":
            self._process_err(line[4:].strip().decode("utf-8", "replace").lower())
        elif op == b"INFO":
            try:
                info = json.loads(line[5:])
            except ValueError:
                raise ProtocolError("nats: an INFO that is not JSON") from None
            if not isinstance(info, dict):
                raise ProtocolError("nats: an INFO that is not a JSON object")
            self._update_info(info)
        else:
            raise ProtocolError(f"nats: unknown protocol line {line[:20]!r}")

    def _make_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> Msg:
        # Subjects are bytes on the wire: anyone may publish one that is not UTF-8 (say to
        # a KV bucket every silo watches). Such bytes become lone surrogates, which the
        # consumers' decoders refuse, rather than an error that would end this reader.
        subj = subject.decode("utf-8", "surrogateescape")
        rep = reply.decode("utf-8", "surrogateescape") if reply else ""
        if headers:
            hdrs, status, description = decode_headers(headers)
            return Msg(subj, rep, data, hdrs, status, description, self._public)
        return Msg(subj, rep, data, None, None, "", self._public)

    def _process_err(self, err: str) -> None:
        text = err.strip().strip("'")
        if "stale connection" in text:
            raise StaleConnectionError("the server says the connection is stale")
        # Most -ERRs close the connection (the reader then sees EOF and we reconnect);
        # permission violations do not. Either way, remember it for the close message.
        self._lost_reason = ProtocolViolationError(f"the server answered -ERR '{text}'")

    def _update_info(self, info: dict[str, Any]) -> None:
        self.info.update(info)
        self._max_payload = int(self.info.get("max_payload", self._max_payload))

    # --- the per-stream tasks -----------------------------------------------------------

    async def _reader(
        self, stream: trio.abc.Stream, leftover: bytes, scope: trio.CancelScope
    ) -> None:
        # What arrived of an incomplete message, joined once it is complete (a large
        # message arrives in many reads: joining each read to the rest would be quadratic).
        parts: list[bytes] = []
        have = need = 0
        try:
            data = leftover
            while True:
                if data:
                    parts.append(data)
                    have += len(data)
                    if have >= need:
                        buf = parts[0] if len(parts) == 1 else b"".join(parts)
                        rest, need = await self._parse(buf)
                        parts = [rest] if rest else []
                        have = len(rest)
                data = bytes(await stream.receive_some(_READ_SIZE))
                if not data:
                    raise NatsConnectionError("the server closed the connection")
        except _CONN_ERRORS as exc:
            self._lost(exc, scope)

    async def _writer(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            while True:
                if not self._buf:
                    self._writer_idle = True
                    await self._writer_lot.park()
                    continue
                data = self._buf
                self._buf = bytearray()
                self._pings_in_buf = 0
                if self._room_lot:
                    self._room_lot.unpark_all()
                await stream.send_all(data)
        except _CONN_ERRORS as exc:
            self._lost(exc, scope)

    async def _pinger(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self._ping_interval)
            if self._pings_outstanding >= self._max_outstanding_pings:
                self._lost(StaleConnectionError("the server stopped answering PINGs"), scope)
                return
            self._pings_outstanding += 1
            self._pongs.append(None)
            self._pings_in_buf += 1
            self._write(b"PING\r\n")

    def _lost(self, exc: BaseException, scope: trio.CancelScope) -> None:
        if self._lost_reason is None:
            self._lost_reason = exc
        scope.cancel()

    # --- connecting, reconnecting, closing ----------------------------------------------

    async def _connect_to(self, server: ServerAddress) -> tuple[trio.abc.Stream, bytes]:
        stream, info, leftover = await handshake(
            server,
            credentials=self._credentials,
            tls=self._tls,
            name=self._name,
            echo=self._echo,
            on_info=self._update_info,
        )
        self.info = {}
        self._update_info(info)
        self._server = server
        # Resubscribe (and the inbox) ahead of whatever was buffered while disconnected.
        inbox = self._inbox_prefix.encode() + b"*"
        preamble = bytearray(self._sub_command(inbox, None, self._inbox_sid))
        for sub in self._subs.values():
            preamble += self._sub_command(sub.subject.encode(), sub.queue, sub.sid)
        self._buf[0:0] = preamble
        self._connected = True
        self._connected_lot.unpark_all()
        return stream, leftover

    async def _connect_any(self, first: bool) -> tuple[trio.abc.Stream, bytes]:
        errors: list[BaseException] = []
        attempts = 0
        while True:
            for server in self._servers:
                try:
                    return await self._connect_to(server)
                except NatsConnectionError as exc:
                    if first and isinstance(exc, AuthorizationError):
                        raise
                    errors.append(exc)
            attempts += 1
            if (
                first
                or not self._reconnect
                or (self._max_reconnect_attempts >= 0 and attempts >= self._max_reconnect_attempts)
            ):
                urls = ", ".join(s.url for s in self._servers)
                raise NatsConnectionError(
                    f"could not connect to any NATS server ({urls}); last error: {errors[-1]}"
                    + ("" if first else f" after {attempts} reconnect rounds")
                ) from errors[-1]
            await trio.sleep(self._reconnect_wait)

    async def _supervise(self, stream: trio.abc.Stream, leftover: bytes) -> None:
        while True:
            self._lost_reason = None
            self._pings_outstanding = 0
            try:
                async with trio.open_nursery() as nursery:
                    scope = nursery.cancel_scope
                    nursery.start_soon(self._reader, stream, leftover, scope)
                    nursery.start_soon(self._writer, stream, scope)
                    nursery.start_soon(self._pinger, scope)
            finally:
                self._connected = False
                await trio.aclose_forcefully(stream)
            # Lost. PINGs already handed to the socket will never be answered.
            sent = len(self._pongs) - self._pings_in_buf
            for _ in range(max(sent, 0)):
                pong = self._pongs.popleft()
                if pong is not None:
                    pong.event.set()  # ok stays False: flush() retries
            if self._closed:
                return
            try:
                stream, leftover = await self._connect_any(first=False)
            except NatsConnectionError as exc:
                self._close(exc)
                return
            self._reconnects += 1

    def _close(self, error: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._connected = False
        if error is not None:
            self._fatal_error = error
        closed = ConnectionClosedError(
            "the NATS connection is closed" + (f": {error}" if error is not None else "")
        )
        for waiter in list(self._requests.values()):
            if type(waiter) is Task:
                reschedule(waiter, outcome.Error(closed))
            else:
                waiter[0]._on_error(closed)
        self._requests.clear()
        for sub in self._subs.values():
            sub._close()
        while self._pongs:
            pong = self._pongs.popleft()
            if pong is not None:
                pong.event.set()
        self._room_lot.unpark_all()
        self._connected_lot.unpark_all()
