"""The ``nats-kv`` reminder table: durable reminders in a JetStream key-value bucket.

One bucket (``grains-reminders`` unless the ``bucket`` option says otherwise, history 1,
created when the table opens if it does not exist) holds one key per reminder. The value
is ``{"start_at": <epoch seconds>, "period": <seconds>}`` as JSON; the ETag is the key's
revision (the stream sequence of its latest entry) as a decimal string, so it changes on
every upsert.

**Keys.** A reminder's key is ``<grain id>.<reminder name>``, each part escaped by
:func:`~trio_grains_nats.storage.escape_kv_part` (the storage provider's escaping: ``A-Z
a-z 0-9 - _ /`` stay, every other character becomes ``=XX`` per UTF-8 byte), so the
reminder ``tick`` of ``counter/alice`` is ``counter/alice.tick``. The one unescaped ``.``
separates the parts; keys are valid KV keys, reversible (:func:`decode_reminder_key`) and
distinct for distinct reminders.

**Reads.** ``read`` is one get. ``read_all`` and ``read_grain`` are scans: a watch of the
keys ``>`` (every key) or ``<grain id>.*`` (one grain's keys; the server filters them), which
delivers the latest entry of each key, O(keys matched). ``read_all`` reads the whole
bucket, delete markers included; the silo calls it when it starts and, in a cluster, every
``SiloConfig.reminder_refresh`` seconds, so it suits tables of thousands of reminders, not
millions.

**Untrusted rows.** Anything that can write the bucket can put any bytes under any key.
A key is decoded by :func:`decode_reminder_key`, a value by :func:`decode_reminder_row`
with the bounds of :mod:`trio_grains._rows`: at most 64 KiB, a JSON object whose
``start_at`` and ``period`` are numbers (not strings, not booleans) that
:func:`~trio_grains._reminders.checked_reminder_row` accepts (within ±1e15 seconds, a
period of at least 1 µs). A key or value that fails makes a *malformed* row: the scans
skip it, count it in :attr:`NatsKvReminderTable.malformed_rows` and log it once; ``read``
of it raises :class:`~trio_grains.StorageError`. Upserting or removing the reminder
replaces it.

**Writes.** ``upsert`` is a plain put (the table's contract: last writer wins). ``remove``
reads the key and writes a delete marker expecting the revision it read (compare-and-set),
so a remove with a stale ETag, or racing an upsert, deletes nothing and returns False.
Removing leaves a small delete marker per key (history 1), as the storage provider does.

The table owns one NATS connection, opened and closed with its ``async with``; while the
server is unreachable calls wait for it to come back (bound them with cancel scopes). NATS
errors are :class:`~trio_grains.StorageError` naming the bucket.

See docs/reminders.md for configuration.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
from nats.js.api import StorageType

from trio_grains import (
    GrainId,
    ProviderContext,
    ReminderEntry,
    ReminderTable,
    StorageError,
)
from trio_grains._reminders import checked_reminder_row
from trio_grains._rows import MalformedRows, load_json_object, number_field

from ._kv_buckets import (
    MAX_SUBJECT_LENGTH,
    check_subject_length,
    open_bucket,
    open_on_connection,
    parse_bucket_options,
    revision_of,
)
from ._options import (
    CONNECT_OPTIONS,
    ConnectOptions,
)
from .client import (
    JS_ERR_MESSAGE_NOT_FOUND,
    Connection,
    KeyDeletedError,
    KeyValue,
    KvEntry,
    NatsError,
    NotFoundError,
    WrongLastSequenceError,
)
from .storage import escape_kv_part, unescape_kv_part

__all__ = [
    "DEFAULT_BUCKET",
    "NatsKvReminderTable",
    "NatsKvReminderTableConfig",
    "decode_reminder_key",
    "decode_reminder_row",
    "open_nats_kv_reminder_table",
    "parse_reminder_options",
    "reminder_key",
]

log = logging.getLogger("trio_grains.reminders")

DEFAULT_BUCKET = "grains-reminders"
_SECTION = "[reminders]"
_MAX_REMOVE_ATTEMPTS = 10

# --- keys and values --------------------------------------------------------------------------


def reminder_key(grain_id: GrainId, name: str) -> str:
    """The KV key of the reminder *name* of *grain_id*: ``<grain id>.<name>``, escaped."""
    if not name:
        raise ValueError("a reminder name must not be empty")
    return f"{escape_kv_part(str(grain_id))}.{escape_kv_part(name)}"


def decode_reminder_key(key: str) -> tuple[GrainId, str]:
    """The ``(grain_id, name)`` whose :func:`reminder_key` is *key*; ValueError if none."""
    grain, dot, name = key.partition(".")
    if not dot or not grain or not name:
        raise ValueError(f"{key!r} is not a reminder key: expected '<grain id>.<name>'")
    return GrainId.parse(unescape_kv_part(grain)), unescape_kv_part(name)


def _encode_value(entry: ReminderEntry) -> bytes:
    return json.dumps(
        {"start_at": float(entry.start_at), "period": float(entry.period)},
        separators=(",", ":"),
    ).encode()


def _decode_value(data: bytes) -> tuple[float, float]:
    """``(start_at, period)`` of a stored value; ValueError (only) if it is not one."""
    value = load_json_object(data)
    return number_field(value, "start_at"), number_field(value, "period")


def decode_reminder_row(key: str, value: bytes, revision: int) -> ReminderEntry:
    """The row stored as *value* under the KV key *key* at *revision* (its ETag).

    Raises :class:`~trio_grains.StorageError`, and nothing else, if *key* is not a
    :func:`reminder_key` or *value* is not a reminder's (see the module's docstring).
    """
    try:
        grain_id, name = decode_reminder_key(key)
        if reminder_key(grain_id, name) != key:
            raise ValueError("it is not the key of the reminder it decodes to")
        start_at, period = _decode_value(value)
        return checked_reminder_row(ReminderEntry(grain_id, name, start_at, period, str(revision)))
    except Exception as exc:  # ValueError from the checks; anything else is malformed too
        raise StorageError(f"malformed reminder row {key[:200]!r}: {exc}") from None


# --- the table --------------------------------------------------------------------------------


@attrs.define(eq=False)
class NatsKvReminderTable(ReminderTable):
    """Reminder rows in the JetStream KV bucket :attr:`bucket`, on the connection *nc*.

    Get one from the ``nats-kv`` reminder-table provider
    (:func:`open_nats_kv_reminder_table`) or, on a connection of your own, :meth:`open`.
    It owns nothing but the bucket handle: it lives as long as *nc*.
    """

    nc: Connection
    _kv: KeyValue
    _malformed: MalformedRows = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._malformed = MalformedRows(f"reminder bucket {self._kv.bucket!r}", log)

    @property
    def malformed_rows(self) -> int:
        """How many malformed rows this table skipped or refused (each key at each
        revision once)."""
        return self._malformed.count

    @classmethod
    async def open(
        cls,
        nc: Connection,
        bucket: str = DEFAULT_BUCKET,
        *,
        replicas: int = 1,
        storage: StorageType = StorageType.FILE,
    ) -> NatsKvReminderTable:
        """The table on *bucket*, created (history 1) unless it exists.

        An existing bucket is used as it is, whatever its settings. Raises
        :class:`~trio_grains.ConfigError` if the bucket cannot be created (e.g. more
        ``replicas`` than the NATS cluster has servers).
        """
        kv = await open_bucket(nc.jetstream(), bucket, replicas=replicas, storage=storage)
        return cls(nc, kv)

    @property
    def bucket(self) -> str:
        return self._kv.bucket

    def __repr__(self) -> str:
        return f"<NatsKvReminderTable bucket={self._kv.bucket!r}>"

    # --- helpers ------------------------------------------------------------------------

    def _key(self, grain_id: GrainId, name: str) -> str:
        try:
            key = reminder_key(grain_id, name)
        except ValueError as exc:
            raise StorageError(f"no KV key for reminder {name!r} of {grain_id}: {exc}") from exc
        what = f"reminder {name!r} of {grain_id}"
        check_subject_length(self._kv.bucket, key, what, "use a shorter grain key or reminder name")
        return key

    def _failed(self, what: str, exc: NatsError) -> StorageError:
        return StorageError(f"NATS KV bucket {self._kv.bucket!r}: {what} failed: {exc}")

    def _row(self, kv_entry: KvEntry) -> ReminderEntry | None:
        """The row of *kv_entry*; ``None`` if it is malformed (counted, logged once)."""
        try:
            return decode_reminder_row(kv_entry.key, kv_entry.value, kv_entry.revision)
        except StorageError as exc:
            self._malformed.report(kv_entry.key, kv_entry.revision, exc)
            return None

    async def _get(self, key: str) -> KvEntry | None:
        """The latest value of *key*, or None if it has none (never written, or deleted)."""
        try:
            return await self._kv.get(key)
        except KeyDeletedError:
            return None
        except NotFoundError as exc:
            if exc.err_code == JS_ERR_MESSAGE_NOT_FOUND:  # the key was never written
                return None
            raise

    async def _scan(self, keys: str, what: str) -> list[ReminderEntry]:
        """The rows under the key filter *keys* (``>`` or ``<grain>.*``): O(keys matched)."""
        rows: dict[str, ReminderEntry] = {}
        try:
            async with self._kv.watch(keys) as watcher:
                # The last entry under the filter once the watch's consumer exists: every
                # entry the watch delivers first (the latest of each key, in revision order)
                # is at or before it, so the snapshot is complete once it or a later one
                # arrives.
                try:
                    last = (await self._kv.last_entry(keys)).revision
                except KeyDeletedError as exc:
                    last = exc.revision
                except NotFoundError as exc:
                    if exc.err_code == JS_ERR_MESSAGE_NOT_FOUND:
                        return []  # nothing under the filter: the watch would deliver nothing
                    raise
                complete = False
                async for kv_entry in watcher:
                    row = self._row(kv_entry) if kv_entry.operation == "PUT" else None
                    if row is not None:
                        rows[kv_entry.key] = row
                    else:
                        rows.pop(kv_entry.key, None)
                    if kv_entry.revision >= last:
                        complete = True
                        break
        except NatsError as exc:
            raise self._failed(what, exc) from exc
        if not complete:
            raise StorageError(
                f"NATS KV bucket {self._kv.bucket!r}: {what} failed: the watch ended early "
                "(connection closed)"
            )
        return list(rows.values())

    # --- the contract -------------------------------------------------------------------

    async def read_all(self) -> list[ReminderEntry]:
        """Every row: a scan of the whole bucket."""
        return await self._scan(">", "reading every reminder")

    async def read_grain(self, grain_id: GrainId) -> list[ReminderEntry]:
        """The rows of *grain_id*: a scan of its keys, ``<grain id>.*``."""
        prefix = escape_kv_part(str(grain_id))
        if len(self._kv.bucket) + len(prefix) + 7 > MAX_SUBJECT_LENGTH:
            return []  # no reminder of it fits a subject, so none was ever stored
        rows = await self._scan(f"{prefix}.*", f"reading the reminders of {grain_id}")
        return [row for row in rows if row.grain_id == grain_id]

    async def read(self, grain_id: GrainId, name: str) -> ReminderEntry | None:
        key = self._key(grain_id, name)
        try:
            kv_entry = await self._get(key)
        except NatsError as exc:
            raise self._failed(f"reading {key!r}", exc) from exc
        if kv_entry is None:
            return None
        try:
            return decode_reminder_row(kv_entry.key, kv_entry.value, kv_entry.revision)
        except StorageError as exc:
            self._malformed.report(kv_entry.key, kv_entry.revision, exc)
            raise StorageError(
                f"NATS KV bucket {self._kv.bucket!r}: key {key!r} holds no reminder: {exc}; "
                "upsert or remove the reminder to replace it"
            ) from None

    async def upsert(self, entry: ReminderEntry) -> str:
        key = self._key(entry.grain_id, entry.name)
        try:
            revision = await self._kv.put(key, _encode_value(entry))
        except NatsError as exc:
            raise self._failed(f"writing {key!r}", exc) from exc
        return str(revision)

    async def remove(self, grain_id: GrainId, name: str, etag: str | None) -> bool:
        key = self._key(grain_id, name)
        expected = None if etag is None else revision_of(etag)
        if etag is not None and expected is None:
            return False  # an ETag this table never issues
        try:
            for _ in range(_MAX_REMOVE_ATTEMPTS):
                current = await self._get(key)
                if current is None:
                    return False
                if expected is not None and current.revision != expected:
                    return False
                try:
                    await self._kv.delete(key, revision=current.revision)
                except WrongLastSequenceError:
                    if expected is not None:
                        return False  # written or removed since: the ETag is stale
                    continue  # any ETag: read it again
                return True
        except NatsError as exc:
            raise self._failed(f"removing {key!r}", exc) from exc
        raise StorageError(
            f"NATS KV bucket {self._kv.bucket!r}: removing {key!r} failed: it changed "
            f"{_MAX_REMOVE_ATTEMPTS} times while being removed"
        )


# --- the provider -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NatsKvReminderTableConfig(ConnectOptions):
    """The ``nats-kv`` reminder table's options, validated (:func:`parse_reminder_options`)."""

    bucket: str = DEFAULT_BUCKET
    replicas: int = 1
    storage: StorageType = StorageType.FILE


KNOWN_OPTIONS = frozenset({"bucket", "replicas", "storage", *CONNECT_OPTIONS})


def parse_reminder_options(options: Mapping[str, Any]) -> NatsKvReminderTableConfig:
    """Validate the ``[reminders] options`` of the ``nats-kv`` reminder table.

    Raises :class:`~trio_grains.ConfigError` naming an unknown key (and listing the valid
    ones) or a key whose value is wrong, and what it must be.
    """
    kwargs, _ = parse_bucket_options(options, KNOWN_OPTIONS, _SECTION, "nats-kv reminder table")
    return NatsKvReminderTableConfig(**kwargs)


@contextlib.asynccontextmanager
async def open_nats_kv_reminder_table(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[NatsKvReminderTable]:
    """The ``nats-kv`` reminder table's factory (registered by the ``nats`` plugin).

    Options: ``servers`` and the credential and TLS options of the other NATS providers,
    ``bucket``, ``replicas``, ``storage`` (see :func:`parse_reminder_options`).
    """
    config = parse_reminder_options(options)

    async def open_table(nc: Connection) -> NatsKvReminderTable:
        return await NatsKvReminderTable.open(
            nc, config.bucket, replicas=config.replicas, storage=config.storage
        )

    async with open_on_connection(
        config, _SECTION, f"{context.silo_name} reminders", config.bucket, open_table
    ) as table:
        yield table
