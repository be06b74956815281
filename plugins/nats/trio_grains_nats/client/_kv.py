"""JetStream key-value buckets: a stream ``KV_<bucket>`` on subjects ``$KV.<bucket>.<key>``.

A key's revision is the stream sequence of its latest entry. ``create`` and ``update``
are compare-and-set publishes (``Nats-Expected-Last-Subject-Sequence``), which is what
makes a directory registration strict. Per-key TTLs use the ``Nats-TTL`` header (the
bucket's stream needs ``allow_msg_ttl``, nats-server >= 2.11); the TTL is sent as given
(milliseconds), not truncated here; note that nats-server itself keeps TTLs in whole
seconds, with a minimum of one second.

``get`` uses JetStream *direct get* (the stored message comes back as is: no JSON, no
base64) when the bucket allows it and has one replica. With more replicas every replica
answers direct gets, and a follower may not have applied the latest writes yet; those
buckets (and ones without ``allow_direct``) are read through the stream leader
(``STREAM.MSG.GET``), so a ``get`` always sees every write acknowledged before it.

Keys are checked before anything is sent (:class:`InvalidKeyError`, a ValueError): tokens
of ``A-Z a-z 0-9 - _ / =`` joined by ``.`` as NATS KV allows, plus ``%`` and ``@`` (grain-id
tokens, the directory's keys, use them); no empty token, no wildcard, and the subject
``$KV.<bucket>.<key>`` at most :data:`MAX_SUBJECT_LENGTH` characters. A key is a subject,
so a wildcard in it would read or write *other* keys (``get("victim.*")`` was the latest
entry of any ``victim.`` key): only :meth:`KeyValue.watch` and :meth:`KeyValue.last_entry`
take a filter, whose tokens may also be ``*`` and, last, ``>``.

A bucket reads its JetStream context's connection (``js._conn``): within the client
package that is one component; code outside it uses the public names only.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo

from ._exceptions import (
    InvalidKeyError,
    JetStreamError,
    KeyDeletedError,
    KeyExistsError,
    NoRespondersError,
    WrongLastSequenceError,
)
from ._jsmsg import JsMsgMetadata
from ._msg import Msg, decode_headers
from ._wire import MAX_SUBJECT_BYTES

if TYPE_CHECKING:
    from ._connection import LateReply
    from ._jetstream import JetStream
    from ._subscription import Subscription

__all__ = ["MAX_SUBJECT_LENGTH", "KeyValue", "KvEntry", "KvWatcher"]

_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_OPERATION = "KV-Operation"
_TTL = "Nats-TTL"
_SEQUENCE = "Nats-Sequence"  # of a direct get's reply
_SUBJECT = "Nats-Subject"  # of a direct get's reply
_DEL_HEADERS = {_OPERATION: "DEL"}

Operation = Literal["PUT", "DEL", "PURGE"]

MAX_SUBJECT_LENGTH = MAX_SUBJECT_BYTES
"""The longest ``$KV.<bucket>.<key>`` subject a key may make (2,048): the longest subject
the connection publishes, so that a protocol line fits nats-server's 4 KiB
``max_control_line``. Valid keys are ASCII: characters are bytes."""

_KEY_TOKEN = re.compile(r"[-/_=a-zA-Z0-9%@]+")
_BUCKET = re.compile(r"[-_a-zA-Z0-9]+")


def _shown(key: str) -> str:
    return repr(key) if len(key) <= 60 else f"{key[:60]!r}... ({len(key)} characters)"


def check_key(prefix: str, key: object, *, wildcards: bool = False) -> None:
    """An :class:`InvalidKeyError` unless *key* is a key NATS KV allows (or, with
    *wildcards*, a filter: tokens may also be ``*``, and the last one ``>``), and
    ``<prefix><key>`` fits :data:`MAX_SUBJECT_LENGTH`."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"a KV key must be a str, not {type(key).__name__}")
    tokens = key.split(".")
    for i, token in enumerate(tokens):
        if _KEY_TOKEN.fullmatch(token):
            continue
        if wildcards and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        what = "filter" if wildcards else "key"
        if not token:
            why = (
                "it is empty"
                if not key
                else "it has an empty token (a leading, trailing or double '.')"
            )
        elif not wildcards and ("*" in token or ">" in token):
            why = "wildcards are for watch() and last_entry() filters, not keys"
        elif token in ("*", ">"):
            why = "'>' may only be its last token"
        else:
            why = "use only A-Z a-z 0-9 - _ / = % @ and '.' between tokens (escape the rest)"
        raise InvalidKeyError(f"bad KV {what} {_shown(key)}: {why}")
    if len(prefix) + len(key) > MAX_SUBJECT_LENGTH:
        raise InvalidKeyError(
            f"bad KV key {_shown(key)}: the subject {prefix}<key> would be longer than "
            f"{MAX_SUBJECT_LENGTH} characters; use a shorter key"
        )


@attrs.frozen
class KvEntry:
    """One entry of a bucket: a value (``PUT``) or a delete/purge marker."""

    bucket: str
    key: str
    value: bytes
    revision: int
    operation: Operation = "PUT"
    delta: int = 0  # for watchers: entries still pending after this one


def _ttl_header(ttl: float | None) -> dict[str, str]:
    if ttl is None:
        return {}
    if ttl <= 0:
        raise ValueError("ttl must be > 0 seconds (nats-server needs at least 1 s)")
    return {_TTL: f"{round(ttl * 1000)}ms"}


async def create_key_value(
    js: JetStream,
    bucket: str,
    *,
    history: int = 1,
    ttl: float | None = None,
    max_bytes: int = -1,
    storage: StorageType = StorageType.FILE,
    replicas: int = 1,
    allow_msg_ttl: bool = True,
    delete_markers_ttl: float | None = None,
) -> KeyValue:
    """Create the bucket (or return it if it exists with the same settings).

    ``delete_markers_ttl``: when a key's per-message TTL expires, the server writes a delete
    marker (kept this many seconds), so watchers see expired keys go away.
    """
    config = StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        max_msgs_per_subject=history,
        max_bytes=max_bytes,
        max_age=ttl,
        storage=storage,
        num_replicas=replicas,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
        duplicate_window=min(ttl, 120.0) if ttl else 120.0,
        allow_msg_ttl=allow_msg_ttl or None,
        subject_delete_marker_ttl=delete_markers_ttl,
    )
    info = await js.add_stream(config)
    return KeyValue(js, bucket, direct=_direct_get_ok(info))


async def key_value(js: JetStream, bucket: str) -> KeyValue:
    """An existing bucket; raises :class:`NotFoundError` if there is none."""
    info = await js.stream_info(f"KV_{bucket}")
    return KeyValue(js, bucket, direct=_direct_get_ok(info))


def _direct_get_ok(info: StreamInfo) -> bool:
    """Whether ``get`` may read *info*'s stream by direct get: it allows them, and only
    the one (leader) replica answers them, so they read every acknowledged write."""
    config = info.config
    return bool(config.allow_direct) and (config.num_replicas or 1) == 1


def _server_version(js: JetStream) -> tuple[int, ...]:
    version = str(js._conn.info.get("version", "0"))
    try:
        return tuple(int(part) for part in version.split("-")[0].split(".")[:2])
    except ValueError:
        return (0,)


class KeyValue:
    """A key-value bucket (``await js.create_key_value("dir")``).

    *direct*: read with direct gets (see the module's docstring); ``create_key_value`` and
    ``key_value`` decide it from the stream's configuration.
    """

    def __init__(self, js: JetStream, bucket: str, *, direct: bool = False) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"bad KV bucket name {bucket!r}: use only A-Z a-z 0-9 - _")
        self._js = js
        self.bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._direct = direct
        # DIRECT.GET.<stream>.<subject> (nats-server >= 2.10): no JSON body to parse.
        self._direct_in_subject = _server_version(js) >= (2, 10)

    def __repr__(self) -> str:
        return f"<KeyValue bucket={self.bucket!r}>"

    async def get(self, key: str) -> KvEntry:
        """The latest value of *key*: :class:`NotFoundError` if it never had one,
        :class:`KeyDeletedError` (a subclass) if its latest entry is a delete.
        :class:`InvalidKeyError` for a key with a wildcard (see :meth:`last_entry`)."""
        check_key(self._prefix, key)
        return await self._last(key)

    async def last_entry(self, keys: str = ">") -> KvEntry:
        """The latest entry of any key that the filter *keys* matches (``*`` for one token,
        a last ``>`` for the rest, as :meth:`watch` takes): its ``key`` is the one found.

        :class:`NotFoundError` if no key matches, :class:`KeyDeletedError` if that latest
        entry is a delete (its ``revision`` is still the filter's last one).
        """
        check_key(self._prefix, keys, wildcards=True)
        return await self._last(keys)

    async def _last(self, key: str) -> KvEntry:
        """The latest entry on ``$KV.<bucket>.<key>`` (*key* checked, maybe a filter)."""
        if not self._direct:
            return await self._get_from_leader(key)
        subject = self._prefix + key
        try:
            msg = await self._js.direct_get_last(
                self._stream,
                subject,
                in_subject=self._direct_in_subject and self._get_in_subject(key),
            )
        except NoRespondersError:
            # The stream stopped allowing direct gets, is (re)starting, or is missing (then
            # this raises NotFoundError, as before), or JetStream is off: ask the leader.
            return await self._get_from_leader(key)
        headers = msg.headers
        if headers is None or _SEQUENCE not in headers:
            raise JetStreamError(f"the direct get of {subject!r} answered without a sequence")
        revision = int(headers[_SEQUENCE])
        key = self._key_of(headers.get(_SUBJECT), key)
        op = headers.get(_OPERATION)
        if op == "DEL" or op == "PURGE":
            raise KeyDeletedError(key, revision)
        return KvEntry(self.bucket, key, msg.data, revision)

    def _get_in_subject(self, key: str) -> bool:
        """Whether a direct get may name *key* in its request subject: not a filter (a
        wildcard would make the request subject one), and short enough that
        ``<api>.DIRECT.GET.<stream>.$KV.<bucket>.<key>`` is a subject the connection sends
        (longer keys are asked for in the request's body)."""
        if "*" in key or ">" in key:
            return False
        api = len(self._js._prefix) + len(".DIRECT.GET.") + len(self._stream) + 1
        return api + len(self._prefix) + len(key) <= MAX_SUBJECT_BYTES

    def _key_of(self, subject: str | None, key: str) -> str:
        """The key of the entry found on *subject*; *key* (what was asked) if unknown."""
        if subject is not None and subject.startswith(self._prefix):
            return subject[len(self._prefix) :]
        return key

    async def _get_from_leader(self, key: str) -> KvEntry:
        """``get`` through the stream leader (``STREAM.MSG.GET``: JSON, base64)."""
        resp = await self._js.api(
            f"STREAM.MSG.GET.{self._stream}", {"last_by_subj": self._prefix + key}
        )
        message = resp["message"]
        key = self._key_of(message.get("subject"), key)
        headers: dict[str, str] | None = None
        if message.get("hdrs"):
            headers, _, _ = decode_headers(base64.b64decode(message["hdrs"]))
        op = (headers or {}).get(_OPERATION, "PUT")
        revision = int(message["seq"])
        if op in ("DEL", "PURGE"):
            raise KeyDeletedError(key, revision)
        data = base64.b64decode(message["data"]) if message.get("data") else b""
        return KvEntry(self.bucket, key, data, revision)

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Set *key*; returns the new revision. *ttl*: seconds until the entry expires."""
        check_key(self._prefix, key)
        headers = _ttl_header(ttl) if ttl is not None else None
        return await self._js.publish_sequence(self._prefix + key, value, headers=headers)

    async def create(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        on_cancel: Callable[[LateReply], None] | None = None,
    ) -> int:
        """Set *key* only if it has no value (never set, or deleted): the revision.

        Raises :class:`KeyExistsError` if it has one: of many concurrent creates, exactly
        one wins. *on_cancel*: see :meth:`update`.
        """
        check_key(self._prefix, key)
        try:
            return await self._cas(key, value, 0, ttl, on_cancel)
        except WrongLastSequenceError as exc:
            try:
                await self.get(key)
            except KeyDeletedError as deleted:
                try:
                    return await self._cas(key, value, deleted.revision, ttl, on_cancel)
                except WrongLastSequenceError:
                    pass
            except Exception:
                pass
            raise KeyExistsError(
                f"key {key!r} already exists in bucket {self.bucket!r}",
                code=exc.code,
                err_code=exc.err_code,
            ) from None

    async def update(
        self,
        key: str,
        value: bytes,
        revision: int,
        *,
        ttl: float | None = None,
        on_cancel: Callable[[LateReply], None] | None = None,
    ) -> int:
        """Set *key* only if its latest revision is *revision*; the new revision.

        Raises :class:`WrongLastSequenceError` if someone else wrote it meanwhile.

        *on_cancel*: called with a :class:`LateReply` if the caller is cancelled after
        the write was sent. The server may still store it, and a *direct* ``get`` sent
        afterwards may be answered before it is: wait for the late reply first to read
        your own write (as the ``nats-kv`` storage provider does).
        """
        check_key(self._prefix, key)
        return await self._cas(key, value, revision, ttl, on_cancel)

    async def _cas(
        self,
        key: str,
        value: bytes,
        last: int,
        ttl: float | None,
        on_cancel: Callable[[LateReply], None] | None,
    ) -> int:
        headers = {_EXPECTED_LAST_SUBJECT_SEQ: str(last)}
        if ttl is not None:
            headers.update(_ttl_header(ttl))
        return await self._js.publish_sequence(
            self._prefix + key, value, headers=headers, on_cancel=on_cancel
        )

    async def delete(
        self,
        key: str,
        *,
        revision: int | None = None,
        on_cancel: Callable[[LateReply], None] | None = None,
    ) -> int:
        """Write a delete marker for *key* (only at *revision*, if given).
        *on_cancel*: see :meth:`update`."""
        check_key(self._prefix, key)
        headers = _DEL_HEADERS
        if revision is not None:
            headers = {**headers, _EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
        return await self._js.publish_sequence(
            self._prefix + key, b"", headers=headers, on_cancel=on_cancel
        )

    @asynccontextmanager
    async def watch(
        self, keys: str = ">", *, include_history: bool = False, updates_only: bool = False
    ) -> AsyncIterator[KvWatcher]:
        """Watch the keys the filter *keys* matches (``*`` for one token, a last ``>`` for
        the rest; default every key): ``async with kv.watch() as w: async for e in w``.

        First the current entries (every revision with *include_history*; none with
        *updates_only*), then every change, deletes included (``operation="DEL"``).
        Backed by an ephemeral push consumer, removed on exit.
        """
        check_key(self._prefix, keys, wildcards=True)
        conn = self._js._conn
        inbox = conn.new_inbox()
        sub = await conn.subscribe(inbox, max_pending=1 << 16)
        policy = "all" if include_history else "new" if updates_only else "last_per_subject"
        config: dict[str, Any] = {
            "deliver_subject": inbox,
            "deliver_policy": policy,
            "ack_policy": "none",
            "filter_subject": self._prefix + keys,
            "mem_storage": True,
            "inactive_threshold": 5_000_000_000,
            "num_replicas": 1,
        }
        resp = await self._js.api(
            f"CONSUMER.CREATE.{self._stream}", {"stream_name": self._stream, "config": config}
        )
        name = resp["name"]
        try:
            yield KvWatcher(self, sub)
        finally:
            await sub.unsubscribe()
            with _shielded(2.0):
                try:
                    await self._js.delete_consumer(self._stream, name)
                except Exception:
                    pass  # it expires by itself (inactive_threshold)


def _shielded(seconds: float) -> trio.CancelScope:
    scope = trio.CancelScope(shield=True)
    scope.deadline = trio.current_time() + seconds
    return scope


class KvWatcher:
    """The entries of a :meth:`KeyValue.watch`, as an async iterator."""

    def __init__(self, kv: KeyValue, sub: Subscription) -> None:
        self._kv = kv
        self._sub = sub

    def __aiter__(self) -> KvWatcher:
        return self

    async def __anext__(self) -> KvEntry:
        while True:
            msg: Msg = await self._sub.__anext__()
            if msg.status is not None:
                continue  # heartbeats / flow control
            meta = JsMsgMetadata.from_reply(msg.reply)
            op = (msg.headers or {}).get(_OPERATION, "PUT")
            return KvEntry(
                self._kv.bucket,
                msg.subject[len(self._kv._prefix) :],
                msg.data,
                meta.stream_seq,
                "DEL" if op == "DEL" else "PURGE" if op == "PURGE" else "PUT",
                meta.num_pending,
            )
