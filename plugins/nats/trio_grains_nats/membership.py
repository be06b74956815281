"""The cluster membership table on a JetStream KV bucket (``grains-membership-<cluster>``).

One key per silo (its id, escaped to KV key characters), the value a JSON object of the
:class:`~trio_grains._membership.SiloEntry` fields except ``version``, which is the key's
revision (the bucket stream's sequence, so it also orders views). Joins are
create-if-absent, heartbeats and status changes compare-and-set on the revision (so a
heartbeat never overwrites a concurrent ``DEAD``), and every write carries a per-key TTL
(``entry_ttl``, a few times the services' ``dead_after``) so that the row of a crashed silo
vanishes even if no silo declares it dead. The bucket stream keeps subject delete markers,
so watchers see expired rows go away.

nats-server >= 2.11 is needed (per-message TTLs); TTLs are whole seconds, at least one.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from nats.js.api import StorageType

from trio_grains._membership import (
    MembershipTable,
    MembershipUnavailableError,
    MembershipView,
    SiloAlreadyJoinedError,
    SiloEntry,
    SiloStatus,
    _check_alive,
    _status_change_needed,
)

from ._exceptions import (
    ConnectionClosedError,
    NatsConnectionError,
    NatsError,
    NotFoundError,
    WrongLastSequenceError,
)
from ._jetstream import JetStream
from ._kv import KeyValue, KvEntry, create_key_value

__all__ = [
    "KvMembershipTable",
    "decode_silo_key",
    "decode_token",
    "encode_silo_key",
    "encode_token",
    "membership_bucket",
]

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


def _encode(entry: SiloEntry) -> bytes:
    return json.dumps(
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


def _decode(kv_entry: KvEntry) -> SiloEntry | None:
    """The row of a KV entry; ``None`` for deletes, TTL markers and foreign values."""
    if kv_entry.operation != "PUT" or not kv_entry.value:
        return None
    try:
        data: dict[str, Any] = json.loads(kv_entry.value)
        return SiloEntry(
            silo_id=str(data["silo_id"]),
            address=str(data["address"]),
            status=SiloStatus(data["status"]),
            roles=[str(r) for r in data["roles"]],
            started_at=float(data["started_at"]),
            heartbeat_at=float(data["heartbeat_at"]),
            version=kv_entry.revision,
            # rows written before these fields existed decode with the defaults
            grain_types=[str(t) for t in data.get("grain_types", ())],
            load=int(data.get("load", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return None  # e.g. a TTL delete marker, or something that is not ours


@attrs.define(eq=False)
class KvMembershipTable(MembershipTable):
    """A membership table in a KV bucket; open it with :meth:`open`.

    ``entry_ttl``: seconds a row lives without being written again (a few times the
    services' ``dead_after``; rounded up to whole seconds by the server). NATS errors are
    translated into :class:`~trio_grains._membership.MembershipUnavailableError`.
    """

    kv: KeyValue
    js: JetStream
    entry_ttl: float
    clock: Callable[[], float] = time.time

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

    async def _get(self, silo_id: str) -> SiloEntry | None:
        try:
            kv_entry = await self.kv.get(encode_silo_key(silo_id))
        except NotFoundError:  # never set, deleted, or expired
            return None
        return _decode(kv_entry)

    async def _write(self, entry: SiloEntry, expected: int | None) -> SiloEntry:
        key = encode_silo_key(entry.silo_id)
        if expected is None:
            revision = await self.kv.create(key, _encode(entry), ttl=self.entry_ttl)
        else:
            revision = await self.kv.update(key, _encode(entry), expected, ttl=self.entry_ttl)
        return attrs.evolve(entry, version=revision)

    async def join(self, entry: SiloEntry) -> SiloEntry:
        entry = attrs.evolve(entry, heartbeat_at=self.clock())
        with _translated():
            while True:
                old = await self._get(entry.silo_id)
                if old is not None and old.alive:
                    raise SiloAlreadyJoinedError(
                        f"silo {entry.silo_id!r} is already a member ({old.status.name}): "
                        "give every silo incarnation its own id"
                    )
                try:
                    return await self._write(entry, None if old is None else old.version)
                except WrongLastSequenceError:  # KeyExistsError included: look again
                    continue

    async def heartbeat(self, silo_id: str, *, load: int | None = None) -> SiloEntry:
        with _translated():
            while True:
                old = await self._get(silo_id)
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
                old = await self._get(silo_id)
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
                yield _KvViews(watcher, initial_done=empty, initial_last=last)


@attrs.define(eq=False)
class _KvViews:
    """Views folded from a KV watcher's entries."""

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
                row = _decode(kv_entry)
                silo_id = row.silo_id if row else decode_silo_key(kv_entry.key)
                if row is None:
                    self.rows.pop(silo_id, None)
                else:
                    self.rows[silo_id] = row
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
