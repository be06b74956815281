"""The cluster membership table on a JetStream KV bucket (``grains-membership-<cluster>``).

One key per silo (its id, escaped to KV key characters), the value a JSON object of the
:class:`~trio_grains._cluster.membership.SiloEntry` fields except ``version``, which is the key's
revision (the bucket stream's sequence, so it also orders views). Joins are
create-if-absent, heartbeats and status changes compare-and-set on the revision (so a
heartbeat never overwrites a concurrent ``DEAD``), and every write carries a per-key TTL
(``entry_ttl``, a few times the services' ``dead_after``) so that the row of a crashed silo
vanishes even if no silo declares it dead. The bucket stream keeps subject delete markers,
so watchers see expired rows go away.

**Rows are untrusted.** Anything that can write the bucket can put any bytes under any
key, so a row is decoded by :func:`decode_silo_row` with the bounds of
:mod:`trio_grains._rows`: at most 64 KiB, a JSON object, every field of its exact type,
and the ``silo_id`` field must be the silo whose key holds it. A row that fails is
*malformed*: the table treats it as absent (as if the key had been deleted), counts it in
:attr:`KvMembershipTable.malformed_rows` and logs it once; no read, watch or join fails
because of it. A silo whose own row is overwritten by a malformed one stops, as it would
if its row were deleted (the others no longer see it); a joining silo replaces a malformed
row under its own id.

nats-server >= 2.11 is needed (per-message TTLs); TTLs are whole seconds, at least one.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio
from nats.js.api import StorageType

from trio_grains._cluster.membership import (
    MembershipError,
    MembershipTable,
    MembershipUnavailableError,
    MembershipView,
    SiloAlreadyJoinedError,
    SiloEntry,
    SiloStatus,
    _check_alive,
    _status_change_needed,
)
from trio_grains._rows import (
    MAX_ROW_BYTES,
    MalformedRows,
    count_field,
    load_json_object,
    number_field,
    text_field,
    texts_field,
)

from .client._exceptions import (
    ConnectionClosedError,
    NatsConnectionError,
    NatsError,
    NotFoundError,
    WrongLastSequenceError,
)
from .client._jetstream import JetStream
from .client._kv import KeyValue, KvEntry, create_key_value

__all__ = [
    "KvMembershipTable",
    "decode_silo_key",
    "decode_silo_row",
    "encode_silo_row",
    "decode_token",
    "encode_silo_key",
    "encode_token",
    "membership_bucket",
]

log = logging.getLogger("trio_grains.membership")

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_KEY_SAFE = re.compile(r"[A-Za-z0-9_-]")


def membership_bucket(cluster: str) -> str:
    """The bucket name of *cluster*'s membership table."""
    if not _CLUSTER_NAME.fullmatch(cluster):
        raise ValueError(
            f"cluster name {cluster!r} must be letters, digits, '-' and '_' (it names a "
            "JetStream KV bucket)"
        )
    return f"grains-membership-{cluster}"


def encode_token(text: str) -> str:
    """*text* as one NATS subject token that is also a KV key, for any string.

    ``A-Z a-z 0-9 _ -`` are kept, every other character becomes ``=XX`` per UTF-8 byte
    (lone surrogates included); the empty string is ``=``, which no other string
    encodes to. :func:`decode_token` reverses it.
    """
    if not text:
        return "="
    return "".join(
        ch
        if _KEY_SAFE.fullmatch(ch)
        else "".join(f"={b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        for ch in text
    )


def decode_token(token: str) -> str:
    """The inverse of :func:`encode_token`."""
    if token == "=":
        return ""
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += token[i].encode()
            i += 1
    return raw.decode("utf-8", "surrogatepass")


def encode_silo_key(silo_id: str) -> str:
    """A KV key for *silo_id* (:func:`encode_token`; a silo id cannot be empty)."""
    if not silo_id:
        raise ValueError("a silo id cannot be empty")
    return encode_token(silo_id)


def decode_silo_key(key: str) -> str:
    """The inverse of :func:`encode_silo_key`."""
    return decode_token(key)


def encode_silo_row(entry: SiloEntry) -> bytes:
    """The stored value of *entry* (JSON; ``version`` is not stored: it is the revision).

    Raises :class:`~trio_grains.MembershipError` for a row that :func:`decode_silo_row`
    would refuse (larger than 64 KiB, say), rather than store one no silo can read.
    """
    data = json.dumps(
        {
            "silo_id": entry.silo_id,
            "address": entry.address,
            "status": entry.status.value,
            "roles": sorted(entry.roles),
            "started_at": entry.started_at,
            "heartbeat_at": entry.heartbeat_at,
            "grain_types": sorted(entry.grain_types),
            "load": entry.load,
        },
        separators=(",", ":"),
    ).encode()
    try:
        decode_silo_row(encode_silo_key(entry.silo_id), data, entry.version)
    except (MembershipError, ValueError) as exc:
        raise MembershipError(
            f"the membership row of silo {entry.silo_id!r} could not be read back ({exc}): "
            f"keep it under {MAX_ROW_BYTES} bytes (fewer or shorter grain type and role "
            "names) and its texts valid UTF-8"
        ) from None
    return data


def decode_silo_row(key: str, value: bytes, revision: int) -> SiloEntry:
    """The row stored as *value* under the KV key *key* at *revision*.

    Raises :class:`~trio_grains.MembershipError`, and nothing else, if *value* is not a
    row of the silo that *key* names (:func:`encode_silo_key` of its ``silo_id``): more
    than 64 KiB, not a JSON object, a field missing or of the wrong type (no coercion),
    an unknown status, a number that is not finite, a load below 0. Fields unknown here
    are ignored; ``grain_types`` and ``load`` default to none and 0 (rows written before
    they existed).
    """
    try:
        data = load_json_object(value)
        silo_id = text_field(data, "silo_id")
        address = text_field(data, "address")
        if not address.isprintable() or any(ch.isspace() for ch in address):
            raise ValueError("field 'address' holds spaces or control characters")
        status = text_field(data, "status")
        try:
            silo_status = SiloStatus(status)
        except ValueError:
            raise ValueError(f"field 'status' is not a silo status: {status[:40]!r}") from None
        entry = SiloEntry(
            silo_id=silo_id,
            address=address,
            status=silo_status,
            roles=texts_field(data, "roles"),
            started_at=number_field(data, "started_at"),
            heartbeat_at=number_field(data, "heartbeat_at"),
            version=revision,
            grain_types=texts_field(data, "grain_types", default=[]),
            load=count_field(data, "load", default=0),
        )
        if encode_silo_key(silo_id) != key:
            raise ValueError(f"it names silo {silo_id[:80]!r}, whose key is not {key[:80]!r}")
    except Exception as exc:  # ValueError from the checks; anything else is malformed too
        raise MembershipError(f"malformed membership row {key[:200]!r}: {exc}") from None
    return entry


def _silo_id_of_key(key: str) -> str | None:
    """The silo id whose key is *key*, ``None`` if no silo id has it."""
    try:
        silo_id = decode_silo_key(key)
        if silo_id and encode_silo_key(silo_id) == key:
            return silo_id
    except Exception:  # ValueError, IndexError: a key written by something else
        pass
    return None


_Read = tuple[SiloEntry | None, int]
"""A key read: its row (``None`` if absent or not a row), and the revision a compare-and-set
write must expect to replace what is there (0 when the key has no value)."""


def _is_value(kv_entry: KvEntry) -> bool:
    """Whether *kv_entry* holds a value: not a delete, and not the empty value of a TTL
    marker (which the server writes without a KV-Operation header)."""
    return kv_entry.operation == "PUT" and bool(kv_entry.value)


@attrs.define(eq=False)
class KvMembershipTable(MembershipTable):
    """A membership table in a KV bucket; open it with :meth:`open`.

    ``entry_ttl``: seconds a row lives without being written again (a few times the
    services' ``dead_after``; rounded up to whole seconds by the server). NATS errors are
    translated into :class:`~trio_grains._cluster.membership.MembershipUnavailableError`. Rows that
    do not decode are skipped (see the module's docstring) and counted in
    :attr:`malformed_rows`.
    """

    kv: KeyValue
    js: JetStream
    entry_ttl: float
    clock: Callable[[], float] = time.time
    _malformed: MalformedRows = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._malformed = MalformedRows(f"membership bucket {self.kv.bucket!r}", log)

    @property
    def malformed_rows(self) -> int:
        """How many malformed rows this table skipped (each key at each revision once)."""
        return self._malformed.count

    @classmethod
    async def open(
        cls,
        js: JetStream,
        cluster: str,
        *,
        entry_ttl: float = 30.0,
        replicas: int = 1,
        storage: StorageType = StorageType.FILE,
    ) -> KvMembershipTable:
        """Create (or reuse) the bucket of *cluster* and return its table."""
        bucket = membership_bucket(cluster)
        ttl = max(1, math.ceil(entry_ttl))
        with _translated():
            kv = await create_key_value(
                js, bucket, storage=storage, replicas=replicas, delete_markers_ttl=float(ttl)
            )
        return cls(kv, js, float(ttl))

    def _row(self, kv_entry: KvEntry) -> SiloEntry | None:
        """The row of *kv_entry*; ``None`` for a delete, a TTL marker, or a malformed row
        (counted and logged once)."""
        if not _is_value(kv_entry):
            return None
        try:
            return decode_silo_row(kv_entry.key, kv_entry.value, kv_entry.revision)
        except MembershipError as exc:
            self._malformed.report(kv_entry.key, kv_entry.revision, exc)
            return None

    async def _get(self, silo_id: str) -> _Read:
        try:
            kv_entry = await self.kv.get(encode_silo_key(silo_id))
        except NotFoundError:  # never set, deleted, or expired
            return None, 0
        return self._row(kv_entry), kv_entry.revision

    async def _write(self, entry: SiloEntry, expected: int) -> SiloEntry:
        """Store *entry* if its key's revision is still *expected* (0: if it has no value)."""
        key = encode_silo_key(entry.silo_id)
        data = encode_silo_row(entry)
        if not expected:
            revision = await self.kv.create(key, data, ttl=self.entry_ttl)
        else:
            revision = await self.kv.update(key, data, expected, ttl=self.entry_ttl)
        return attrs.evolve(entry, version=revision)

    async def join(self, entry: SiloEntry) -> SiloEntry:
        entry = attrs.evolve(entry, heartbeat_at=self.clock())
        with _translated():
            while True:
                old, revision = await self._get(entry.silo_id)
                if old is not None and old.alive:
                    raise SiloAlreadyJoinedError(
                        f"silo {entry.silo_id!r} is already a member ({old.status.name}): "
                        "give every silo incarnation its own id"
                    )
                try:
                    # over a DEAD row, a malformed one or a TTL marker: replace what is there
                    return await self._write(entry, revision)
                except WrongLastSequenceError:  # KeyExistsError included: look again
                    continue

    async def heartbeat(self, silo_id: str, *, load: int | None = None) -> SiloEntry:
        with _translated():
            while True:
                old, _ = await self._get(silo_id)
                _check_alive(silo_id, old)
                assert old is not None
                new_load = old.load if load is None else load
                try:
                    return await self._write(
                        attrs.evolve(old, heartbeat_at=self.clock(), load=new_load), old.version
                    )
                except WrongLastSequenceError:
                    continue  # written meanwhile (maybe DEAD): look again

    async def set_status(
        self, silo_id: str, status: SiloStatus, *, if_version: int | None = None
    ) -> SiloEntry | None:
        with _translated():
            while True:
                old, _ = await self._get(silo_id)
                if old is None:
                    return None
                if not _status_change_needed(old, status, if_version):
                    return old
                try:
                    return await self._write(attrs.evolve(old, status=status), old.version)
                except WrongLastSequenceError:
                    continue

    async def leave(self, silo_id: str) -> None:
        with _translated():
            await self.kv.delete(encode_silo_key(silo_id))

    async def snapshot(self) -> MembershipView:
        async with self.watch() as views:
            async for view in views:
                return view
        raise MembershipUnavailableError(  # pragma: no cover - watch ended at once
            f"the watch of bucket {self.kv.bucket!r} ended before its first view"
        )

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[MembershipView]]:
        with _translated():
            async with self.kv.watch() as watcher:
                # The stream's last sequence once the watch's consumer exists: the initial
                # rows are in once an entry at or past it arrives (the per-message pending
                # count, ``delta``, can read 0 early while rows are being written).
                info = await self.js.stream_info(f"KV_{self.kv.bucket}")
                empty = not (info.state and info.state.messages)
                last = info.state.last_seq if info.state else 0
                yield _KvViews(self, watcher, initial_done=empty, initial_last=last)


@attrs.define(eq=False)
class _KvViews:
    """Views folded from a KV watcher's entries."""

    table: KvMembershipTable
    watcher: AsyncIterator[KvEntry]
    initial_done: bool
    initial_last: int = 0  # the first view waits for an entry at or past this revision
    rows: dict[str, SiloEntry] = attrs.field(factory=dict)
    version: int = 0
    yielded_first: bool = False

    def __aiter__(self) -> _KvViews:
        return self

    async def __anext__(self) -> MembershipView:
        if not self.yielded_first and self.initial_done:
            self.yielded_first = True
            await trio.lowlevel.checkpoint()
            return MembershipView(self.rows, self.version)
        with _translated():
            while True:
                try:
                    kv_entry = await self.watcher.__anext__()
                except StopAsyncIteration:
                    raise MembershipUnavailableError(
                        "the membership watch ended (connection closed)"
                    ) from None
                self.version = max(self.version, kv_entry.revision)
                # A malformed row counts as absent: the key's previous row goes away. A key
                # that names no silo (written by something else) changes nothing.
                row = self.table._row(kv_entry)
                if row is not None:
                    self.rows[row.silo_id] = row  # decoding checked the id is the key's
                else:
                    silo_id = _silo_id_of_key(kv_entry.key)
                    if silo_id is not None:
                        self.rows.pop(silo_id, None)
                if not self.yielded_first and kv_entry.revision < self.initial_last:
                    continue  # still catching up with the current rows
                self.yielded_first = True
                return MembershipView(self.rows, self.version)


class _translated:
    """Turn transport-level NATS errors into ``MembershipUnavailableError``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, NatsConnectionError | ConnectionClosedError):
            raise MembershipUnavailableError(f"membership table unreachable: {exc}") from exc
        if isinstance(exc, NatsError) and not isinstance(exc, WrongLastSequenceError):
            raise MembershipUnavailableError(f"membership table error: {exc}") from exc
