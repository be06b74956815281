"""The Trio-native NATS connection: :func:`connect` and the public :class:`Connection`.

The machinery (buffers, reader/writer/pinger tasks, reconnection) is in ``_wire.py``;
README "Design" explains the shape and the numbers behind it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio
from trio.lowlevel import Abort, checkpoint_if_cancelled, current_task, wait_task_rescheduled

from ._exceptions import NatsError, NoRespondersError
from ._handshake import Credentials, parse_servers
from ._msg import Msg
from ._subscription import PayloadSubscription, SlowConsumerPolicy, Subscription, _Interest
from ._wire import _BAD_SUBJECT, Wire, _Pong

if TYPE_CHECKING:
    from ._jetstream import JetStream

__all__ = ["Connection", "ConnectionStatistics", "LateReply", "connect"]


class LateReply:
    """The reply to a request whose caller was cancelled after the request was sent.

    The server may still act on such a request (a JetStream publish is stored or not),
    and its reply still comes. Whoever must know the outcome before going on (a storage
    provider's next read of the key, say) waits for it with :meth:`wait`, bounded by a
    cancel scope, and calls :meth:`forget` if it stops waiting, so a reply that never
    comes does not stay registered.
    """

    __slots__ = ("_event", "_requests", "_token", "result")

    def __init__(self, requests: dict[bytes, Any], token: bytes) -> None:
        self._requests = requests
        self._token = token
        self._event = trio.Event()
        #: The reply, or the error that ended the wait for it (the connection closed).
        self.result: Msg | Exception | None = None

    @property
    def settled(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Wait until the reply came or the connection closed."""
        await self._event.wait()

    def forget(self) -> None:
        """Stop expecting the reply (it is dropped if it comes later)."""
        if self._requests.get(self._token) == (self, 0):
            del self._requests[self._token]

    # the connection's waiter protocol (see _wire.Wire._parse)
    def _on_reply(self, _index: int, msg: Msg) -> None:
        self.result = msg
        self._event.set()

    def _on_error(self, exc: Exception) -> None:
        self.result = exc
        self._event.set()


@attrs.frozen
class ConnectionStatistics:
    """A snapshot of a connection's counters (payload bytes, not protocol bytes)."""

    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    reconnects: int
    pending_bytes: int  # written by publishers, not yet handed to the socket
    pending_requests: int
    subscriptions: int
    connected: bool
    server: str | None


class Connection(Wire):
    """A NATS connection; get one with ``async with connect(...) as nc``."""

    # --- public API ------------------------------------------------------------------

    @property
    def connected_url(self) -> str | None:
        return self._server.url if self._server is not None and self._connected else None

    @property
    def max_payload(self) -> int:
        return self._max_payload

    def new_inbox(self) -> str:
        """A unique subject to receive replies on (``<inbox_prefix>.<nuid>``; the prefix
        is ``_INBOX`` unless :func:`connect` was given another)."""
        return f"{self.inbox_root}." + self._nuid.next().decode()

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        reply: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish *payload* on *subject*.

        Returns as soon as the message is in the outgoing buffer (the writer task sends
        buffered messages in large chunks): this is a checkpoint only for cancellation,
        unless the buffer holds more than ``max_pending_bytes`` (the socket, or the
        reconnect, is behind), in which case it waits for room. Use :meth:`flush` to know
        the server has it.
        """
        await self._wait_to_write()
        self._write_pub(subject, reply, payload, headers)

    def publish_nowait(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        reply: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """:meth:`publish` without waiting (not a checkpoint).

        Raises :class:`trio.WouldBlock` when the outgoing buffer holds
        ``max_pending_bytes`` or more, :class:`ConnectionClosedError` when the connection
        is closed (or draining); otherwise buffers the message exactly as :meth:`publish`
        does (also while reconnecting).
        """
        if len(self._buf) >= self._max_pending_bytes:
            self._check_open()
            raise trio.WouldBlock
        self._write_pub(subject, reply, payload, headers)

    async def subscribe(
        self,
        subject: str,
        *,
        queue: str | None = None,
        max_pending: int = 65536,
        slow_consumer: SlowConsumerPolicy = "block",
    ) -> Subscription:
        """Subscribe to *subject* (wildcards allowed), in queue group *queue* if given.

        At most *max_pending* messages are buffered; *slow_consumer* says what happens
        when the buffer is full (see :class:`Subscription`).
        """
        await checkpoint_if_cancelled()
        subj = self._check_subscription(subject, queue)
        sub = Subscription(self, self._next_sid(), subject, queue, max_pending, slow_consumer)
        self._add_subscription(sub, subj)
        return sub

    async def subscribe_payloads(
        self,
        subject: str,
        *,
        queue: str | None = None,
        max_pending: int = 65536,
        slow_consumer: SlowConsumerPolicy = "block",
    ) -> PayloadSubscription:
        """Subscribe to *subject* as :meth:`subscribe` does, for a consumer that takes
        only the payloads, in batches (:meth:`PayloadSubscription.next_batch`): no
        :class:`Msg` per message, one wake-up of the consumer per read from the socket."""
        await checkpoint_if_cancelled()
        subj = self._check_subscription(subject, queue)
        sub = PayloadSubscription(
            self, self._next_sid(), subject, queue, max_pending, slow_consumer
        )
        self._add_subscription(sub, subj)
        return sub

    def _check_subscription(self, subject: str, queue: str | None) -> bytes:
        """The encoded *subject*, once the connection, it and *queue* are fine."""
        self._check_open()
        subj = self._encode_subject(subject)
        if queue is not None and (not queue or _BAD_SUBJECT.search(queue)):
            raise ValueError(f"bad queue group name {queue!r}")
        return subj

    def _add_subscription(self, sub: _Interest, subj: bytes) -> None:
        self._subs[sub.sid] = sub
        self._write(self._sub_command(subj, sub.queue, sub.sid))

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        on_cancel: Callable[[LateReply], None] | None = None,
    ) -> Msg:
        """Publish a request and wait for the first reply.

        There is no timeout parameter: wrap the call in ``trio.move_on_after`` /
        ``fail_after``. Raises :class:`NoRespondersError` when nobody subscribes to
        *subject*.

        *on_cancel*: if the caller is cancelled after the request was sent, it is called
        (synchronously, before ``trio.Cancelled`` is raised) with a :class:`LateReply`
        that receives the reply instead.
        """
        await self._wait_to_write()
        self._req_seq += 1
        seq = str(self._req_seq)
        token = seq.encode()
        requests = self._requests
        self._write_pub(subject, self._inbox_prefix_b + token, payload, headers)
        requests[token] = current_task()

        def abort(_: Any) -> Abort:
            if on_cancel is None:
                requests.pop(token, None)
            elif token in requests:
                late = LateReply(requests, token)
                requests[token] = (late, 0)
                on_cancel(late)
            return Abort.SUCCEEDED

        msg: Msg = await wait_task_rescheduled(abort)
        if msg.status == 503:
            raise NoRespondersError(f"no responders are subscribed to {subject!r}")
        return msg

    async def flush(self) -> None:
        """Wait until the server has processed everything published so far (PING/PONG)."""
        while True:
            if self._closed:
                self._check_open()
            if not self._connected:
                await self._wait_connected()
                continue
            pong = _Pong()
            self._pongs.append(pong)
            self._pings_in_buf += 1
            self._write(b"PING\r\n")
            await pong.event.wait()
            if pong.ok:
                return
            # the connection broke before the PONG: flush again on the new connection

    async def drain(self) -> None:
        """Unsubscribe everything, deliver what is in flight, flush, then close.

        Iterators of the subscriptions end once their buffered messages are consumed;
        this waits for that (bound the wait with a cancel scope).
        """
        if self._closed or self._draining:
            return
        self._draining = True
        for sub in list(self._subs.values()):
            self._write(b"UNSUB %d\r\n" % sub.sid)
        await self.flush()
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub._close()
        for sub in subs:
            await sub._wait_consumed()
        await self.flush()
        self._close(None)

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            in_msgs=self._in_msgs,
            out_msgs=self._out_msgs,
            in_bytes=self._in_bytes,
            out_bytes=self._out_bytes,
            reconnects=self._reconnects,
            pending_bytes=len(self._buf),
            pending_requests=len(self._requests),
            subscriptions=len(self._subs),
            connected=self._connected,
            server=self.connected_url,
        )

    def jetstream(self, *, prefix: str = "$JS.API") -> JetStream:
        """A :class:`~trio_grains_nats.client.JetStream` context on this connection."""
        from ._jetstream import JetStream

        return JetStream(self, prefix=prefix)

    async def _wait_to_write(self) -> None:
        """A checkpoint for cancellation; waits while the outgoing buffer is full."""
        if len(self._buf) >= self._max_pending_bytes:
            await self._wait_for_room()
        else:
            await checkpoint_if_cancelled()

    async def _unsubscribe(self, sub: _Interest) -> None:
        await checkpoint_if_cancelled()
        if self._subs.pop(sub.sid, None) is not None and not self._closed:
            self._write(b"UNSUB %d\r\n" % sub.sid)
        sub._close()

    async def _drain_subscription(self, sub: _Interest) -> None:
        if self._subs.get(sub.sid) is sub and not self._closed:
            self._write(b"UNSUB %d\r\n" % sub.sid)
            await self.flush()  # every message sent before the UNSUB has now arrived
        self._subs.pop(sub.sid, None)
        sub._close()
        await sub._wait_consumed()


@asynccontextmanager
async def connect(
    servers: str | list[str] | tuple[str, ...] = "nats://127.0.0.1:4222",
    *,
    name: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    nkeys_seed: str | None = None,
    creds: str | None = None,
    tls: ssl.SSLContext | None = None,
    echo: bool = True,
    max_pending_bytes: int = 4 * 1024 * 1024,
    ping_interval: float = 120.0,
    max_outstanding_pings: int = 2,
    reconnect: bool = True,
    reconnect_wait: float = 2.0,
    max_reconnect_attempts: int = 60,
    close_timeout: float = 2.0,
    inbox_prefix: str = "_INBOX",
) -> AsyncIterator[Connection]:
    """Connect to the first reachable server of *servers*; close on exit.

    ``max_pending_bytes`` bounds the outgoing buffer (publishes wait when it is full,
    including while reconnecting). After a lost connection, every server is tried
    ``max_reconnect_attempts`` rounds (``-1``: forever), ``reconnect_wait`` seconds
    apart; subscriptions are renewed on the new server. Leaving the block flushes
    buffered publishes (shielded, at most ``close_timeout`` seconds), then closes.
    Replies (to requests, JetStream API calls and pulls) arrive under ``inbox_prefix``
    (as nats-py's option of that name): give each user its own, e.g. ``_INBOX_web``, and
    the server can let it subscribe to ``_INBOX_web.>`` only.
    """
    conn = Connection(
        parse_servers(servers),
        credentials=Credentials(user, password, token, nkeys_seed, creds),
        tls=tls,
        name=name,
        echo=echo,
        max_pending_bytes=max_pending_bytes,
        ping_interval=ping_interval,
        max_outstanding_pings=max_outstanding_pings,
        reconnect=reconnect,
        reconnect_wait=reconnect_wait,
        max_reconnect_attempts=max_reconnect_attempts,
        inbox_prefix=inbox_prefix,
    )
    stream, leftover = await conn._connect_any(first=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn._supervise, stream, leftover)
        try:
            yield conn
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + close_timeout
                if not conn._closed and conn._connected:
                    try:
                        await conn.flush()
                    except NatsError:
                        pass
            conn._close(None)
            nursery.cancel_scope.cancel()
