"""The ``nats-kv`` storage provider: grain states in a JetStream key-value bucket.

One bucket (``grains-state`` unless the ``bucket`` option says otherwise, history 1,
created when the provider opens if it does not exist) holds one key per record. The
value is the state exactly as the silo encoded it; the ETag is the key's revision (the
stream sequence of its latest entry) as a decimal string.

**Keys.** A KV key may only hold ``A-Z a-z 0-9 - / _ = .`` and must not start or end with
``.``. A record's key is ``<state name>.<grain id>``, each part escaped by
:func:`escape_kv_part`: ``A-Z a-z 0-9 - _ /`` stay as they are, and every other
character becomes ``=XX`` for each byte of its UTF-8 form (uppercase hex), ``=`` and
``.`` included. So ``cart`` of ``cart/alice`` is ``cart.cart/alice``, ``dict`2/a+b`` is
``dict=602/a=2Bb``, and ``café`` is ``caf=C3=A9``. The one unescaped ``.`` separates the
two parts; the escaping is reversible (:func:`decode_record_key`) and two different
records never share a key.

**Compare-and-set.** ``write`` with ETag ``None`` is the bucket's ``create`` (a publish
expecting the key to have no value, or a delete marker as its latest entry); with an ETag
it is ``update``, a publish expecting that revision
(``Nats-Expected-Last-Subject-Sequence``). ``clear`` writes a delete marker expecting
the revision. The server checks the expectation, so it holds between silos: a mismatch
is :class:`~trio_grains.InconsistentStateError` and nothing is written. Clearing leaves
a small delete marker per key (history 1), as the grain directory's buckets do.

The provider owns one NATS connection, opened and closed with its ``async with``. While
the server is unreachable the connection reconnects (every half second, forever) and
calls wait for it; bound them with cancel scopes (the silo's response timeouts). NATS
errors reach the grain as :class:`~trio_grains.StorageError` naming the bucket.

See docs/storage-nats-kv.md for options, durability and limits.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

import attrs
import trio
from nats.js.api import StorageType

from trio_grains import (
    GrainId,
    GrainStorage,
    InconsistentStateError,
    ProviderContext,
    StorageError,
    StoredState,
)

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
    LateReply,
    NatsError,
    NotFoundError,
    WrongLastSequenceError,
)

__all__ = [
    "DEFAULT_BUCKET",
    "NatsKvStorage",
    "NatsKvStorageConfig",
    "decode_record_key",
    "escape_kv_part",
    "open_nats_kv_storage",
    "parse_storage_options",
    "record_key",
    "unescape_kv_part",
]

DEFAULT_BUCKET = "grains-state"

HEADER_ALLOWANCE = 128
#: How long a read, write or clear waits for the ack of a cancelled write of its key.
SETTLE_TIMEOUT = 5.0
"""Bytes of a write's payload budget (the server's ``max_payload``) kept for its headers."""

_KEY_SAFE = frozenset(string.ascii_letters + string.digits + "-_/")
_UPPER_HEX = frozenset("0123456789ABCDEF")

# --- keys -------------------------------------------------------------------------------------


def escape_kv_part(text: str) -> str:
    """*text* with every character outside ``A-Z a-z 0-9 - _ /`` as ``=XX`` per UTF-8 byte.

    The result is non-empty for non-empty *text* and holds no ``.``; :func:`unescape_kv_part`
    reverses it. Raises :class:`ValueError` for a lone surrogate.
    """
    if _KEY_SAFE.issuperset(text):
        return text
    parts: list[str] = []
    for ch in text:
        if ch in _KEY_SAFE:
            parts.append(ch)
        else:
            parts.extend(f"={byte:02X}" for byte in ch.encode("utf-8"))
    return "".join(parts)


def unescape_kv_part(text: str) -> str:
    """Reverse :func:`escape_kv_part`; :class:`ValueError` for text it cannot have made."""
    if _KEY_SAFE.issuperset(text):
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _KEY_SAFE:
            out += ch.encode()
            i += 1
        elif ch == "=" and i + 3 <= len(text) and _UPPER_HEX.issuperset(text[i + 1 : i + 3]):
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raise ValueError(f"{text!r} is not an escaped key part: bad {ch!r} at index {i}")
    decoded = out.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if escape_kv_part(decoded) != text:  # e.g. "=41" for "A": not what escaping makes
        raise ValueError(f"{text!r} is not an escaped key part: it escapes a safe character")
    return decoded


def record_key(state_name: str, grain_id: GrainId) -> str:
    """The KV key of the record ``(state_name, grain_id)``: ``<state>.<grain id>``, escaped."""
    if not state_name:
        raise ValueError("a state name must not be empty")
    return f"{escape_kv_part(state_name)}.{escape_kv_part(str(grain_id))}"


def decode_record_key(key: str) -> tuple[str, GrainId]:
    """The ``(state_name, grain_id)`` whose :func:`record_key` is *key*; ValueError if none."""
    state, dot, grain = key.partition(".")
    if not dot or not state or not grain:
        raise ValueError(f"{key!r} is not a record key: expected '<state>.<grain id>'")
    return unescape_kv_part(state), GrainId.parse(unescape_kv_part(grain))


# --- the storage ------------------------------------------------------------------------------


@attrs.define(eq=False)
class NatsKvStorage(GrainStorage):
    """Grain states in the JetStream KV bucket :attr:`bucket`, on the connection *nc*.

    Get one from the ``nats-kv`` provider (:func:`open_nats_kv_storage`) or, on a
    connection of your own, :meth:`open`. It owns nothing but the bucket handle: it lives
    as long as *nc*.
    """

    nc: Connection
    _kv: KeyValue
    #: Keys with a write whose caller was cancelled after sending it, and its late ack.
    _in_doubt: dict[str, LateReply] = attrs.field(factory=dict, init=False)
    #: Keys up to this long fit any subject (``check_subject_length`` need not look).
    _short_keys: int = attrs.field(init=False)

    @_short_keys.default
    def _short_keys_default(self) -> int:
        return MAX_SUBJECT_LENGTH - len(self._kv.bucket) - len("$KV..")

    @classmethod
    async def open(
        cls,
        nc: Connection,
        bucket: str = DEFAULT_BUCKET,
        *,
        replicas: int = 1,
        storage: StorageType = StorageType.FILE,
        max_bytes: int = -1,
    ) -> NatsKvStorage:
        """The storage on *bucket*, created (history 1) unless it exists.

        An existing bucket is used as it is, whatever its settings. Raises
        :class:`~trio_grains.ConfigError` if the bucket cannot be created (e.g. more
        ``replicas`` than the NATS cluster has servers).
        """
        kv = await open_bucket(
            nc.jetstream(),
            bucket,
            replicas=replicas,
            storage=storage,
            max_bytes=max_bytes,
            settings="replicas, storage and max_bytes",
        )
        return cls(nc, kv)

    @property
    def bucket(self) -> str:
        return self._kv.bucket

    def __repr__(self) -> str:
        return f"<NatsKvStorage bucket={self._kv.bucket!r}>"

    def _key(self, state_name: str, grain_id: GrainId) -> str:
        try:
            key = record_key(state_name, grain_id)
        except ValueError as exc:
            raise StorageError(f"no KV key for state {state_name!r} of {grain_id}: {exc}") from exc
        if len(key) > self._short_keys:  # named only when it is too long (a read, a write)
            what = f"state {state_name!r} of {grain_id}"
            check_subject_length(self._kv.bucket, key, what, "use a shorter grain key")
        return key

    def _failed(self, what: str, exc: NatsError) -> StorageError:
        return StorageError(f"NATS KV bucket {self._kv.bucket!r}: {what} failed: {exc}")

    async def _conflict(self, key: str, expected: str | None, what: str) -> NoReturn:
        try:
            current: str | None = str((await self._kv.get(key)).revision)
        except NotFoundError:
            current = None
        except NatsError:
            current = "unknown"
        raise InconsistentStateError(
            f"{what} of key {key!r} in NATS KV bucket {self._kv.bucket!r} expected ETag "
            f"{expected!r} but the stored one is {current!r}"
        )

    async def _settle(self, key: str) -> None:
        """Wait for the ack of a cancelled write of *key*, if one is in doubt.

        The server may store a write whose caller was cancelled after sending it, and a
        direct get sent afterwards may be answered before it is: without this, a read
        after a cancelled write could return the old record while the write lands, and
        the next write with that ETag would conflict. A lost ack stops being waited for
        after :data:`SETTLE_TIMEOUT` (the ETag check then decides, as between silos).
        """
        late = self._in_doubt.get(key)
        if late is None:
            return
        with trio.move_on_after(SETTLE_TIMEOUT):
            await late.wait()
        late.forget()
        if self._in_doubt.get(key) is late:
            del self._in_doubt[key]

    def _doubt(self, key: str) -> Callable[[LateReply], None]:
        def in_doubt(late: LateReply) -> None:
            self._in_doubt[key] = late

        return in_doubt

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        key = self._key(state_name, grain_id)
        if self._in_doubt:
            await self._settle(key)
        try:
            entry = await self._kv.get(key)
        except KeyDeletedError:
            return None
        except NotFoundError as exc:
            if exc.err_code == JS_ERR_MESSAGE_NOT_FOUND:  # the key was never written
                return None
            raise self._failed(f"reading {key!r}", exc) from exc
        except NatsError as exc:
            raise self._failed(f"reading {key!r}", exc) from exc
        return StoredState(entry.value, str(entry.revision))

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        key = self._key(state_name, grain_id)
        limit = self.nc.max_payload - HEADER_ALLOWANCE
        if len(data) > limit:
            raise StorageError(
                f"state {state_name!r} of {grain_id} is {len(data)} bytes, more than NATS KV "
                f"bucket {self._kv.bucket!r} takes ({limit}: the server's max_payload less "
                f"{HEADER_ALLOWANCE} for headers); raise max_payload in the nats-server "
                "configuration, or keep the state smaller"
            )
        if self._in_doubt:
            await self._settle(key)
        try:
            if etag is None:
                revision = await self._kv.create(key, bytes(data), on_cancel=self._doubt(key))
            else:
                expected = revision_of(etag)
                if expected is None:
                    await self._conflict(key, etag, "a write")
                revision = await self._kv.update(
                    key, bytes(data), expected, on_cancel=self._doubt(key)
                )
        except WrongLastSequenceError:  # KeyExistsError too
            await self._conflict(key, etag, "a write")
        except NatsError as exc:
            raise self._failed(f"writing {key!r}", exc) from exc
        return str(revision)

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        key = self._key(state_name, grain_id)
        if self._in_doubt:
            await self._settle(key)
        if etag is None:  # nothing to delete if there is no record, a conflict if there is
            if await self.read(state_name, grain_id) is not None:
                await self._conflict(key, etag, "a clear")
            return
        expected = revision_of(etag)
        if expected is None:
            await self._conflict(key, etag, "a clear")
        try:
            await self._kv.delete(key, revision=expected, on_cancel=self._doubt(key))
        except WrongLastSequenceError:
            await self._conflict(key, etag, "a clear")
        except NatsError as exc:
            raise self._failed(f"clearing {key!r}", exc) from exc


# --- the provider -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NatsKvStorageConfig(ConnectOptions):
    """The ``nats-kv`` provider's options, validated (:func:`parse_storage_options`)."""

    bucket: str = DEFAULT_BUCKET
    replicas: int = 1
    storage: StorageType = StorageType.FILE
    max_bytes: int = -1


KNOWN_OPTIONS = frozenset({"bucket", "replicas", "storage", "max_bytes", *CONNECT_OPTIONS})


def parse_storage_options(name: str, options: Mapping[str, Any]) -> NatsKvStorageConfig:
    """Validate the ``[storage.<name>] options`` of a ``nats-kv`` provider.

    Raises :class:`~trio_grains.ConfigError` naming an unknown key (and listing the valid
    ones) or a key whose value is wrong, and what it must be.
    """
    section = f"[storage.{name}]"
    kwargs, bad = parse_bucket_options(options, KNOWN_OPTIONS, section, "nats-kv storage provider")
    if "max_bytes" in options:
        value = options["max_bytes"]
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise bad("max_bytes", "a number of bytes (-1 or 0: unlimited)")
        kwargs["max_bytes"] = value if value > 0 else -1
    return NatsKvStorageConfig(**kwargs)


@contextlib.asynccontextmanager
async def open_nats_kv_storage(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[NatsKvStorage]:
    """The ``nats-kv`` storage provider's factory (registered by the ``nats`` plugin).

    Options: ``servers`` and the credential and TLS options of the other NATS providers,
    ``bucket``, ``replicas``, ``storage``, ``max_bytes`` (see :func:`parse_storage_options`).
    """
    config = parse_storage_options(context.name, options)

    async def open_storage(nc: Connection) -> NatsKvStorage:
        return await NatsKvStorage.open(
            nc,
            config.bucket,
            replicas=config.replicas,
            storage=config.storage,
            max_bytes=config.max_bytes,
        )

    async with open_on_connection(
        config,
        f"[storage.{context.name}]",
        f"{context.silo_name} storage.{context.name}",
        config.bucket,
        open_storage,
    ) as storage:
        yield storage
