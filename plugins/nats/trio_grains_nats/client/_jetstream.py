"""JetStream: stream and consumer management, publish with acks, pull consumers.

Every API call is a core request to ``$JS.API.<...>`` through the connection's one reply
inbox; JSON bodies are nats-py's dataclasses (:mod:`nats.js.api`), which are loop-agnostic.

Private members of the connection are read on purpose: the pipelined publish path
(:meth:`JetStream.publish_many`) writes straight into the connection's buffer and reply
table (``conn._buf``, ``_max_pending_bytes``, ``_wait_for_room``, ``_requests``,
``_inbox_prefix_b``, ``_req_seq``, ``_write_pub``) so thousands of publishes share one
inbox and one parked task without a per-message request object. Within the client package
the connection, the wire and JetStream are one component, changed together; nothing outside
:mod:`trio_grains_nats.client` may do this (the providers use only its public names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import outcome
import trio
from nats.js.api import ConsumerConfig, ConsumerInfo, PubAck, StreamConfig, StreamInfo
from trio.lowlevel import (
    Abort,
    Task,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from ._exceptions import (
    JS_ERR_MESSAGE_NOT_FOUND,
    JetStreamAPIError,
    JetStreamError,
    NoRespondersError,
    NotFoundError,
    api_error,
)
from ._jsmsg import JsMsg
from ._msg import Msg

if TYPE_CHECKING:
    from ._connection import Connection, LateReply
    from ._kv import KeyValue
    from ._subscription import Subscription

__all__ = ["JetStream", "PublishItem", "PullSubscription"]

MSG_ID = "Nats-Msg-Id"


@attrs.frozen
class PublishItem:
    """One message for :meth:`JetStream.publish_many`."""

    subject: str
    payload: bytes = b""
    msg_id: str | None = None
    headers: Mapping[str, str] | None = None


def _pub_ack(msg: Msg, subject: str) -> PubAck:
    if msg.status == 503:
        raise JetStreamError(
            f"no JetStream stream listens on {subject!r}: add a stream whose subjects "
            "match it (JetStream.add_stream)"
        )
    resp = json.loads(msg.data)
    error = resp.get("error")
    if error is not None:
        raise api_error(error.get("description", ""), error.get("code"), error.get("err_code"))
    return PubAck.from_response(resp)


# A successful ack is ``{"stream":"S","seq":N}`` (plus ``"domain"``/``"duplicate"``). A
# quote inside a JSON string is escaped, so ``"seq":`` can only be the key itself.
_ACK_SEQ = re.compile(rb'"seq":\s*(\d+)')


def _pub_seq(msg: Msg, subject: str) -> int:
    """The stream sequence of a publish ack, without building a ``PubAck``; raises as
    :func:`_pub_ack` does."""
    data = msg.data
    if msg.status is None and b'"error"' not in data:
        match = _ACK_SEQ.search(data)
        if match is not None:
            return int(match[1])
    _pub_ack(msg, subject)  # raises the explanation (503, API error), if there is one
    return int(json.loads(data)["seq"])


_T = TypeVar("_T")


def _collect(
    items: list[PublishItem | tuple[str, bytes]],
    replies: list[Msg | None],
    parse: Callable[[Msg, str], _T],
) -> list[_T]:
    results: list[_T] = []
    errors: list[Exception] = []
    for item, reply in zip(items, replies, strict=True):
        subject = item[0] if type(item) is tuple else item.subject  # type: ignore[union-attr]
        assert reply is not None
        try:
            results.append(parse(reply, subject))
        except JetStreamError as exc:
            errors.append(exc)
    if errors:
        first = errors[0]
        first.add_note(f"{len(errors)} of {len(items)} publishes failed")
        raise first
    return results


class _AckCollector:
    """Collects the replies of a window of pipelined publishes (one parked task)."""

    __slots__ = ("error", "in_flight", "replies", "target", "task")

    def __init__(self, n: int) -> None:
        self.replies: list[Msg | None] = [None] * n
        self.in_flight = 0
        self.target = 0
        self.task: Task | None = None
        self.error: BaseException | None = None

    def _on_reply(self, index: int, msg: Msg) -> None:
        self.replies[index] = msg
        self.in_flight -= 1
        if self.task is not None and self.in_flight <= self.target:
            task, self.task = self.task, None
            reschedule(task, outcome.Value(None))

    def _on_error(self, exc: BaseException) -> None:
        self.error = exc
        if self.task is not None:
            task, self.task = self.task, None
            reschedule(task, outcome.Error(exc))

    async def wait_until(self, target: int) -> None:
        if self.error is not None:
            raise self.error
        if self.in_flight <= target:
            return
        self.target = target
        self.task = current_task()

        def abort(_: Any) -> Abort:
            self.task = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)


class JetStream:
    """JetStream on a :class:`Connection` (``nc.jetstream()``)."""

    def __init__(self, conn: Connection, *, prefix: str = "$JS.API") -> None:
        self._conn = conn
        self._prefix = prefix

    # --- the API ------------------------------------------------------------------

    async def api(self, subject: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A raw JetStream API request (``$JS.API.<subject>``); raises on API errors."""
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self._conn.request(f"{self._prefix}.{subject}", payload)
        except NoRespondersError:
            raise JetStreamError(
                "JetStream is not enabled on this server (no responders on the API): start "
                "nats-server with -js"
            ) from None
        resp: dict[str, Any] = json.loads(msg.data)
        error = resp.get("error")
        if error is not None:
            raise api_error(error.get("description", ""), error.get("code"), error.get("err_code"))
        return resp

    async def add_stream(self, config: StreamConfig | None = None, **params: Any) -> StreamInfo:
        """Create a stream (``add_stream(name="ORDERS", subjects=["orders.>"])``)."""
        config = (config or StreamConfig()).evolve(**params)
        if not config.name:
            raise ValueError("a stream needs a name")
        resp = await self.api(f"STREAM.CREATE.{config.name}", config.as_dict())
        return cast(StreamInfo, StreamInfo.from_response(resp))

    async def update_stream(self, config: StreamConfig | None = None, **params: Any) -> StreamInfo:
        config = (config or StreamConfig()).evolve(**params)
        resp = await self.api(f"STREAM.UPDATE.{config.name}", config.as_dict())
        return cast(StreamInfo, StreamInfo.from_response(resp))

    async def stream_info(self, name: str) -> StreamInfo:
        return cast(StreamInfo, StreamInfo.from_response(await self.api(f"STREAM.INFO.{name}")))

    async def delete_stream(self, name: str) -> None:
        await self.api(f"STREAM.DELETE.{name}")

    async def add_consumer(
        self, stream: str, config: ConsumerConfig | None = None, **params: Any
    ) -> ConsumerInfo:
        """Create (or update, same config) a consumer; durable when ``durable_name`` is set."""
        config = (config or ConsumerConfig()).evolve(**params)
        name = config.durable_name or config.name
        subject = f"CONSUMER.CREATE.{stream}" + (f".{name}" if name else "")
        resp = await self.api(subject, {"stream_name": stream, "config": config.as_dict()})
        return cast(ConsumerInfo, ConsumerInfo.from_response(resp))

    async def consumer_info(self, stream: str, consumer: str) -> ConsumerInfo:
        resp = await self.api(f"CONSUMER.INFO.{stream}.{consumer}")
        return cast(ConsumerInfo, ConsumerInfo.from_response(resp))

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        await self.api(f"CONSUMER.DELETE.{stream}.{consumer}")

    # --- publishing -----------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        """Publish and wait for the stream's acknowledgement.

        With *msg_id*, a second publish of the same id inside the stream's duplicate
        window is not stored again: its ack has ``duplicate=True``.
        """
        if msg_id is not None:
            headers = {**(headers or {}), MSG_ID: msg_id}
        return _pub_ack(await self._publish_request(subject, payload, headers), subject)

    async def publish_sequence(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        on_cancel: Callable[[LateReply], None] | None = None,
    ) -> int:
        """As :meth:`publish`, but returns only the stream sequence (no ``PubAck``): the
        key-value writes' path. Errors are raised exactly as by :meth:`publish`.
        *on_cancel* as for :meth:`Connection.request`: the ack of a publish whose caller
        was cancelled after sending it."""
        reply = await self._publish_request(subject, payload, headers, on_cancel)
        return _pub_seq(reply, subject)

    async def _publish_request(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | None,
        on_cancel: Callable[[LateReply], None] | None = None,
    ) -> Msg:
        try:
            return await self._conn.request(subject, payload, headers=headers, on_cancel=on_cancel)
        except NoRespondersError:
            raise JetStreamError(
                f"no JetStream stream listens on {subject!r}: add a stream whose subjects "
                "match it (JetStream.add_stream)"
            ) from None

    async def direct_get_last(self, stream: str, subject: str, *, in_subject: bool) -> Msg:
        """The last message on *subject* of *stream* through JetStream *direct get*
        (the stream needs ``allow_direct``): the stored message itself, its payload as
        ``data``, its headers plus ``Nats-Stream``, ``Nats-Subject``, ``Nats-Sequence``
        and ``Nats-Time-Stamp``.

        *in_subject*: ask on ``DIRECT.GET.<stream>.<subject>`` with an empty body
        (nats-server >= 2.10; no JSON for the server to parse), else send
        ``{"last_by_subj": subject}`` to ``DIRECT.GET.<stream>``.

        Raises :class:`NotFoundError` if *subject* has no message, and lets
        :class:`NoRespondersError` through: nobody answers direct gets for *stream* (it
        does not exist, does not allow direct gets, or JetStream is off).
        """
        if in_subject:
            msg = await self._conn.request(f"{self._prefix}.DIRECT.GET.{stream}.{subject}")
        else:
            body = b'{"last_by_subj":' + json.dumps(subject).encode() + b"}"
            msg = await self._conn.request(f"{self._prefix}.DIRECT.GET.{stream}", body)
        status = msg.status
        if status is not None:
            if status == 404:
                raise NotFoundError(
                    msg.description or "no message found",
                    code=404,
                    err_code=JS_ERR_MESSAGE_NOT_FOUND,
                )
            raise api_error(msg.description or f"direct get failed ({status})", status, None)
        return msg

    async def publish_many(
        self,
        items: Iterable[PublishItem | tuple[str, bytes]],
        *,
        max_in_flight: int = 4000,
    ) -> list[PubAck]:
        """Publish many messages with up to *max_in_flight* acks outstanding at once.

        All share the connection's one reply inbox and one parked task (this one). Returns
        the acks in order; if some publishes failed, raises the first error (with a note
        saying how many failed) after every ack arrived.
        """
        items = list(items)
        replies = await self._publish_pipelined(items, max_in_flight)
        return _collect(items, replies, _pub_ack)

    async def publish_many_sequences(
        self,
        items: Iterable[PublishItem | tuple[str, bytes]],
        *,
        max_in_flight: int = 4000,
    ) -> list[int]:
        """As :meth:`publish_many`, but returns only the stream sequences (a duplicate's
        is the original's), skipping the ``PubAck`` objects: the stream provider's path."""
        items = list(items)
        replies = await self._publish_pipelined(items, max_in_flight)
        return _collect(items, replies, _pub_seq)

    async def _publish_pipelined(
        self, items: list[PublishItem | tuple[str, bytes]], max_in_flight: int
    ) -> list[Msg | None]:
        conn = self._conn
        collector = _AckCollector(len(items))
        requests = conn._requests
        prefix = conn._inbox_prefix_b
        low_water = max_in_flight // 2
        tokens: list[bytes] = []
        await checkpoint_if_cancelled()
        try:
            for index, item in enumerate(items):
                if collector.in_flight >= max_in_flight:
                    await collector.wait_until(low_water)
                if len(conn._buf) >= conn._max_pending_bytes:
                    await conn._wait_for_room()
                if type(item) is tuple:
                    subject, payload = item
                    headers = None
                else:
                    assert isinstance(item, PublishItem)
                    subject, payload, headers = item.subject, item.payload, item.headers
                    if item.msg_id is not None:
                        headers = {**(headers or {}), MSG_ID: item.msg_id}
                conn._req_seq += 1
                token = str(conn._req_seq).encode()
                conn._write_pub(subject, prefix + token, payload, headers)
                requests[token] = (collector, index)
                tokens.append(token)
                collector.in_flight += 1
            await collector.wait_until(0)
        finally:
            if collector.in_flight:
                for token in tokens:
                    requests.pop(token, None)
        return collector.replies

    # --- consuming ------------------------------------------------------------------

    async def pull_subscribe(self, stream: str, consumer: str) -> PullSubscription:
        """Bind to an existing durable pull consumer (see :meth:`add_consumer`)."""
        inbox = self._conn.new_inbox()
        sub = await self._conn.subscribe(inbox + ".*", max_pending=1 << 20)
        return PullSubscription(self, stream, consumer, inbox, sub)

    # --- key-value ------------------------------------------------------------------

    async def create_key_value(self, bucket: str, **options: Any) -> KeyValue:
        from ._kv import create_key_value

        return await create_key_value(self, bucket, **options)

    async def key_value(self, bucket: str) -> KeyValue:
        from ._kv import key_value

        return await key_value(self, bucket)


class PullSubscription:
    """A durable pull consumer bound to one reply inbox; :meth:`fetch` batches from it."""

    def __init__(
        self, js: JetStream, stream: str, consumer: str, inbox: str, sub: Subscription
    ) -> None:
        self._js = js
        self.stream = stream
        self.consumer = consumer
        self._inbox = inbox
        self._sub = sub
        self._seq = 0
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    async def fetch(
        self, batch: int = 1, *, expires: float = 5.0, no_wait: bool = False
    ) -> list[JsMsg]:
        """Up to *batch* messages; fewer if *expires* seconds pass first (or, with
        *no_wait*, if fewer are available right now). An empty list when none came."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        # As nats-py does: first take what is there now (no_wait), and only when nothing
        # is, wait up to *expires* for the first messages.
        msgs = await self._pull(batch, None)
        if msgs or no_wait:
            return msgs
        return await self._pull(batch, expires)

    async def _pull(self, batch: int, expires: float | None) -> list[JsMsg]:
        conn = self._js._conn
        self._seq += 1
        reply = f"{self._inbox}.{self._seq}"
        body: dict[str, Any] = {"batch": batch}
        if expires is None:
            body["no_wait"] = True
        else:
            body["expires"] = int(expires * 1e9)
        await conn.publish(self._next_subject, json.dumps(body).encode(), reply=reply)
        recv = self._sub._recv
        msgs: list[JsMsg] = []
        while len(msgs) < batch:
            try:
                msg = recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):  # next_msg waits, or says why
                msg = await self._sub.next_msg()
            if msg.status is not None:
                if msg.subject != reply or msg.status == 100:
                    continue  # a status of an earlier (cancelled) fetch, or a heartbeat
                if msg.status in (404, 408):
                    break
                if msg.status == 409 and msgs:
                    break
                raise JetStreamAPIError(
                    f"pull request on {self.stream}/{self.consumer} failed: "
                    f"{msg.status} {msg.description}",
                    code=msg.status,
                )
            msgs.append(JsMsg(msg, conn))
        return msgs

    async def unsubscribe(self) -> None:
        await self._sub.unsubscribe()
