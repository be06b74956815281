"""The cluster membership table on a JetStream KV bucket (``grains-membership-<cluster>``).

A row store (:class:`~trio_grains.MembershipTable`): the core's membership protocol does
the joining, heartbeating and declaring dead, and encodes and decodes the rows. Here: one
key per silo (its id escaped to KV key characters, :func:`encode_silo_key`), the value the
row's bytes, the row's version the key's revision (the bucket stream's sequence, so it also
orders the rows of a watch). Inserts are the bucket's create-if-absent, updates and deletes
compare-and-set on the revision, and every write carries a per-key TTL (``entry_ttl``, a
few times the services' ``dead_after``; the table's
:attr:`~trio_grains.MembershipTable.row_ttl`) so that the row of a crashed silo vanishes
even if no silo declares it dead. The bucket stream keeps subject delete markers, so
watchers see expired rows go away; an expired row's marker (an empty value) is no row.

**Rows are untrusted**, and the core checks them: anything that can write the bucket can
put any bytes under any key, and the table hands every value to the core as it is. A row
that does not decode is absent, counted in :attr:`KvMembershipTable.malformed_rows` and
logged once (see :func:`trio_grains.decode_silo_row`).

nats-server >= 2.11 is needed (per-message TTLs); TTLs are whole seconds, at least one.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
from nats.js.api import StorageType

import trio_grains
from trio_grains import (
    MembershipRow,
    MembershipRows,
    MembershipTable,
    MembershipUnavailableError,
    SiloEntry,
)

from .client import (
    ConnectionClosedError,
    JetStream,
    KeyExistsError,
    KeyValue,
    KvEntry,
    NatsConnectionError,
    NatsError,
    NotFoundError,
    WrongLastSequenceError,
    create_key_value,
)

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

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_KEY_SAFE = re.compile(r"[A-Za-z0-9_-]")
_MAX_ATTEMPTS = 100  # a create that keeps meeting expiring markers gives up after this


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
    """:func:`trio_grains.encode_silo_row` with this table's keys."""
    return trio_grains.encode_silo_row(entry, encode_silo_key)


def decode_silo_row(key: str, value: bytes, revision: int) -> SiloEntry:
    """:func:`trio_grains.decode_silo_row` with this table's keys: the row stored as
    *value* under the KV key *key* at *revision*; :class:`~trio_grains.MembershipError`,
    and nothing else, if it is not a row of the silo *key* names."""
    return trio_grains.decode_silo_row(key, value, revision, encode_silo_key)


def _row(kv_entry: KvEntry) -> MembershipRow | None:
    """The row *kv_entry* holds; ``None`` for a delete, or the empty value of a TTL marker
    (which the server writes without a KV-Operation header)."""
    if kv_entry.operation != "PUT" or not kv_entry.value:
        return None
    return MembershipRow(kv_entry.key, kv_entry.value, kv_entry.revision)


@attrs.define(eq=False)
class KvMembershipTable(MembershipTable):
    """A membership table in a KV bucket; open it with :meth:`open`.

    ``entry_ttl``: seconds a row lives without being written again (a few times the
    services' ``dead_after``; rounded up to whole seconds by the server). NATS errors are
    translated into :class:`~trio_grains.MembershipUnavailableError`.
    """

    kv: KeyValue
    js: JetStream
    entry_ttl: float

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

    @property
    def row_ttl(self) -> float:
        return self.entry_ttl

    def key_of(self, silo_id: str) -> str:
        return encode_silo_key(silo_id)

    def describe(self) -> str:
        return f"membership bucket {self.kv.bucket!r}"

    # --- the row store ---

    async def read_row(self, key: str) -> MembershipRow | None:
        with _translated():
            try:
                return _row(await self.kv.get(key))
            except NotFoundError:  # never set, deleted (KeyDeletedError), or purged
                return None

    async def insert_row(self, key: str, data: bytes) -> int | None:
        with _translated():
            for _ in range(_MAX_ATTEMPTS):
                try:
                    return await self.kv.create(key, data, ttl=self.entry_ttl)
                except KeyExistsError:
                    pass
                try:
                    stored = await self.kv.get(key)
                except NotFoundError:
                    continue  # deleted meanwhile: create again
                if _row(stored) is not None:
                    return None
                try:  # a TTL marker: no row, so replace it
                    return await self.kv.update(key, data, stored.revision, ttl=self.entry_ttl)
                except WrongLastSequenceError:
                    continue
        raise MembershipUnavailableError(
            f"could not insert {key!r} in {self.describe()}: its key changed "
            f"{_MAX_ATTEMPTS} times meanwhile"
        )

    async def update_row(self, key: str, data: bytes, version: int) -> int | None:
        with _translated():
            try:
                return await self.kv.update(key, data, version, ttl=self.entry_ttl)
            except WrongLastSequenceError:
                return None

    async def delete_row(self, key: str, version: int) -> bool:
        with _translated():
            try:
                await self.kv.delete(key, revision=version)
            except WrongLastSequenceError:
                return False
            return True

    @asynccontextmanager
    async def watch_rows(self) -> AsyncIterator[AsyncIterator[MembershipRows]]:
        with _translated():
            async with self.kv.watch() as watcher:
                # The stream's last sequence once the watch's consumer exists: the initial
                # rows are in once an entry at or past it arrives (the per-message pending
                # count, ``delta``, can read 0 early while rows are being written).
                info = await self.js.stream_info(f"KV_{self.kv.bucket}")
                empty = not (info.state and info.state.messages)
                last = info.state.last_seq if info.state else 0
                yield _KvRows(watcher, initial_done=empty, initial_last=last)


@attrs.define(eq=False)
class _KvRows:
    """Row snapshots folded from a KV watcher's entries."""

    watcher: AsyncIterator[KvEntry]
    initial_done: bool
    initial_last: int = 0  # the first snapshot waits for an entry at or past this revision
    rows: dict[str, MembershipRow] = attrs.field(factory=dict)
    version: int = 0
    yielded_first: bool = False

    def __aiter__(self) -> _KvRows:
        return self

    async def __anext__(self) -> MembershipRows:
        if not self.yielded_first and self.initial_done:
            self.yielded_first = True
            await trio.lowlevel.checkpoint()
            return MembershipRows(self.rows, self.version)
        with _translated():
            while True:
                try:
                    kv_entry = await self.watcher.__anext__()
                except StopAsyncIteration:
                    raise MembershipUnavailableError(
                        "the membership watch ended (connection closed)"
                    ) from None
                self.version = max(self.version, kv_entry.revision)
                row = _row(kv_entry)
                if row is None:
                    self.rows.pop(kv_entry.key, None)
                else:
                    self.rows[kv_entry.key] = row
                if not self.yielded_first and kv_entry.revision < self.initial_last:
                    continue  # still catching up with the current rows
                self.yielded_first = True
                return MembershipRows(self.rows, self.version)


class _translated:
    """Turn transport-level NATS errors into ``MembershipUnavailableError``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, NatsConnectionError | ConnectionClosedError):
            raise MembershipUnavailableError(f"membership table unreachable: {exc}") from exc
        if isinstance(exc, NatsError) and not isinstance(exc, WrongLastSequenceError):
            raise MembershipUnavailableError(f"membership table error: {exc}") from exc
