"""JetStream messages: acknowledgements and the metadata carried by the ``$JS.ACK`` reply."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

from ._msg import Msg

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["JsMsg", "JsMsgMetadata", "ack_all"]

_ACK = b"+ACK"
_NAK = b"-NAK"
_TERM = b"+TERM"
_WPI = b"+WPI"


@attrs.frozen
class JsMsgMetadata:
    """What the ``$JS.ACK.<...>`` reply subject of a consumed message says about it."""

    stream: str
    consumer: str
    num_delivered: int  # 1 on first delivery, 2 on the first redelivery, ...
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    num_pending: int
    domain: str | None = None

    @classmethod
    def from_reply(cls, reply: str) -> JsMsgMetadata:
        tokens = reply.split(".")
        if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
            raise ValueError(f"{reply!r} is not a JetStream ack subject")
        domain = None
        if len(tokens) >= 12:  # v2: $JS.ACK.<domain>.<account hash>.<stream>...
            domain = None if tokens[2] == "_" else tokens[2]
            tokens = tokens[2:]
        _, _, stream, consumer, delivered, sseq, cseq, ts, pending = tokens[:9]
        return cls(
            stream=stream,
            consumer=consumer,
            num_delivered=int(delivered),
            stream_seq=int(sseq),
            consumer_seq=int(cseq),
            timestamp_ns=int(ts),
            num_pending=int(pending),
            domain=domain,
        )


class JsMsg:
    """A message pulled from a JetStream consumer; acknowledge it with one of the methods.

    Acks are plain publishes to the reply subject, so they ride the connection's
    coalescing writer: acking a batch in a loop costs one syscall, not one per message.
    """

    __slots__ = ("_acked", "_conn", "_metadata", "msg")

    def __init__(self, msg: Msg, conn: Connection) -> None:
        self.msg = msg
        self._conn = conn
        self._metadata: JsMsgMetadata | None = None
        self._acked = False

    def __repr__(self) -> str:
        return f"<JsMsg subject={self.subject!r} reply={self.msg.reply!r}>"

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> dict[str, str] | None:
        return self.msg.headers

    @property
    def metadata(self) -> JsMsgMetadata:
        if self._metadata is None:
            self._metadata = JsMsgMetadata.from_reply(self.msg.reply)
        return self._metadata

    async def _send(self, body: bytes) -> None:
        if self._acked:
            raise ValueError(f"{self!r} was already acknowledged (ack, nak or term)")
        if not self.msg.reply:
            raise ValueError(f"{self!r} has no reply subject: it cannot be acknowledged")
        self._acked = True
        await self._conn.publish(self.msg.reply, body)

    async def ack(self) -> None:
        """Acknowledge: processed, do not redeliver."""
        await self._send(_ACK)

    async def ack_sync(self) -> None:
        """Acknowledge and wait until the server confirmed it (a request)."""
        if self._acked:
            raise ValueError(f"{self!r} was already acknowledged")
        self._acked = True
        await self._conn.request(self.msg.reply, _ACK)

    async def nak(self, delay: float | None = None) -> None:
        """Negative ack: redeliver, after *delay* seconds if given."""
        if delay is None:
            await self._send(_NAK)
        else:
            await self._send(b'-NAK {"delay": %d}' % int(delay * 1e9))

    async def term(self) -> None:
        """Terminate: never redeliver this message (it failed for good)."""
        await self._send(_TERM)

    async def in_progress(self) -> None:
        """Still working on it: resets the ack-wait timer (can be sent many times)."""
        if not self.msg.reply:
            raise ValueError(f"{self!r} has no reply subject")
        await self._conn.publish(self.msg.reply, _WPI)


async def ack_all(msgs: Iterable[JsMsg]) -> None:
    """Acknowledge every message of *msgs* (one buffered write for the lot)."""
    for msg in msgs:
        await msg.ack()
