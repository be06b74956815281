"""A cluster-wide grain directory in a JetStream key-value bucket.

One bucket per cluster, ``grains-directory-<cluster>``. The key of a grain is its
``grain_id.token`` (reversible, and safe as a NATS subject token whatever the key holds:
``/``, dots, spaces, ``*``, ``>``, any unicode); the value is the entry as JSON. The
bucket's revision of a key is the entry's ``revision``.

* ``register`` is the bucket's create-if-absent (a publish expecting the key to have no
  value), so of any number of silos racing, exactly one entry is stored; the losers read
  and return it.
* ``unregister`` reads the entry and, if it is still the caller's activation, deletes it
  expecting that revision (compare-and-set): a stale unregister never removes a newer
  activation's entry.
* ``remove_silo`` / ``remove_silos_not_in`` read every entry (a watch of the whole bucket,
  O(entries)) and compare-and-set delete those of dead silos.

Deletes leave a delete marker per grain key in the bucket (history 1); markers are
small but are not compacted yet.

**Entries are untrusted.** Anything that can write the bucket can put any bytes under any
key, so an entry is decoded by the core's :func:`trio_grains.decode_directory_entry` (at
most 64 KiB, a JSON object, string fields, and the grain it names must be the one whose key
holds it). An entry that fails is *malformed*: counted in
:attr:`KvGrainDirectory.malformed_rows`, logged once, and otherwise treated as no entry:
``lookup`` returns ``None``, scans skip it, ``unregister`` leaves it, and ``register``
replaces it (compare-and-set on its revision), so the grain activates again. (A
malformed entry names no activation any silo could route a call to.)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Set
from typing import TYPE_CHECKING

import attrs
from nats.js.api import StorageType

from trio_grains import (
    ConfigError,
    DirectoryEntry,
    DirectoryError,
    GrainDirectory,
    GrainId,
    MalformedRows,
    decode_directory_entry,
    encode_directory_entry,
)

from .client import (
    KeyExistsError,
    KeyValue,
    KvEntry,
    NatsError,
    NotFoundError,
    WrongLastSequenceError,
)

if TYPE_CHECKING:
    from .client import JetStream

__all__ = ["KvGrainDirectory", "decode_directory_entry", "directory_bucket_name"]

log = logging.getLogger("trio_grains.directory")

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_MAX_ATTEMPTS = 100  # CAS retries under churn before giving up (each one means progress)


def directory_bucket_name(cluster: str) -> str:
    """``grains-directory-<cluster>``; *cluster* holds only ``A-Z a-z 0-9 _ -``."""
    if not isinstance(cluster, str) or not _CLUSTER_NAME.fullmatch(cluster):
        raise ConfigError(
            f"cluster name {cluster!r} cannot name a NATS key-value bucket: use only "
            "ASCII letters, digits, '_' and '-'"
        )
    return f"grains-directory-{cluster}"


@attrs.define(eq=False)
class KvGrainDirectory(GrainDirectory):
    """The grain directory of a cluster in the JetStream KV bucket *kv* (of *js*).

    Open it with :meth:`open` (creates the bucket if needed). Holds no resources of its
    own: it lives as long as the connection of *kv*. Each silo uses its own instance on
    its own connection.
    """

    kv: KeyValue
    js: JetStream
    _malformed: MalformedRows = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._malformed = MalformedRows(f"directory bucket {self.kv.bucket!r}", log)

    @property
    def malformed_rows(self) -> int:
        """How many malformed entries this directory skipped (each key at each revision
        once)."""
        return self._malformed.count

    def _decode(self, kv_entry: KvEntry) -> DirectoryEntry | None:
        """The entry of *kv_entry*; ``None`` if it is malformed (counted, logged once)."""
        try:
            return decode_directory_entry(kv_entry.key, kv_entry.value, kv_entry.revision)
        except DirectoryError as exc:
            self._malformed.report(kv_entry.key, kv_entry.revision, exc)
            return None

    @classmethod
    async def open(
        cls,
        js: JetStream,
        cluster: str,
        *,
        replicas: int = 1,
        storage: StorageType = StorageType.FILE,
    ) -> KvGrainDirectory:
        """The directory of *cluster*: bucket ``grains-directory-<cluster>``, created if
        absent (*replicas* and *storage* apply when it is created)."""
        bucket = directory_bucket_name(cluster)
        try:
            kv = await js.create_key_value(
                bucket, history=1, replicas=replicas, storage=storage, allow_msg_ttl=False
            )
        except NatsError as exc:
            raise DirectoryError(f"cannot open the directory bucket {bucket!r}: {exc}") from exc
        return cls(kv, js)

    # --- the contract ---------------------------------------------------------------

    async def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        key = entry.grain_id.token
        data = encode_directory_entry(entry)
        try:
            for _ in range(_MAX_ATTEMPTS):
                try:
                    revision = await self.kv.create(key, data)
                except KeyExistsError:
                    pass
                else:
                    return attrs.evolve(entry, revision=revision)
                try:
                    stored = await self.kv.get(key)
                except NotFoundError:
                    continue  # unregistered in between: try to create again
                winner = self._decode(stored)
                if winner is not None:
                    return winner
                try:  # malformed: replace it, unless it changed meanwhile
                    revision = await self.kv.update(key, data, stored.revision)
                except WrongLastSequenceError:
                    continue
                return attrs.evolve(entry, revision=revision)
        except NatsError as exc:
            raise DirectoryError(f"cannot register {entry.grain_id}: {exc}") from exc
        raise DirectoryError(
            f"cannot register {entry.grain_id}: its entry changed {_MAX_ATTEMPTS} times while "
            "registering; is something registering and unregistering it in a loop?"
        )

    async def lookup(self, grain_id: GrainId) -> DirectoryEntry | None:
        try:
            return self._decode(await self.kv.get(grain_id.token))
        except NotFoundError:
            return None
        except NatsError as exc:
            raise DirectoryError(f"cannot look up {grain_id}: {exc}") from exc

    async def unregister(self, entry: DirectoryEntry) -> bool:
        key = entry.grain_id.token
        try:
            for _ in range(_MAX_ATTEMPTS):
                try:
                    stored = self._decode(await self.kv.get(key))
                except NotFoundError:
                    return False
                if stored is None or stored.activation_id != entry.activation_id:
                    return False
                if await self._delete_at(key, stored.revision):
                    return True
        except NatsError as exc:
            raise DirectoryError(f"cannot unregister {entry.grain_id}: {exc}") from exc
        raise DirectoryError(
            f"cannot unregister {entry.grain_id}: its entry changed {_MAX_ATTEMPTS} times"
        )

    async def remove_silo(self, silo_id: str) -> int:
        """Remove the entries of *silo_id*: a scan of the whole bucket, O(entries)."""
        return await self._remove_where(lambda silo: silo == silo_id)

    async def remove_silos_not_in(self, live: Set[str]) -> int:
        """Remove the entries of silos not in *live*: a scan of the whole bucket."""
        return await self._remove_where(lambda silo: silo not in live)

    # --- helpers --------------------------------------------------------------------

    async def entries(self) -> list[DirectoryEntry]:
        """Every entry in the bucket now (a snapshot, O(entries)); malformed ones skipped."""
        try:
            return [entry for _, entry in await self._scan()]
        except NatsError as exc:
            raise DirectoryError(f"cannot list the directory {self.kv.bucket!r}: {exc}") from exc

    async def _scan(self) -> list[tuple[str, DirectoryEntry]]:
        found: list[tuple[str, DirectoryEntry]] = []
        async with self.kv.watch() as watcher:
            # Read the last sequence only once the watch runs: every entry up to it is then
            # delivered before it (read before, a key rewritten in between could come after
            # the stop point and be missed). The watch delivers the latest entry of every
            # key, in order; the pending count, delta, can read 0 too early while keys are
            # being written, so it is not the stop signal.
            info = await self.js.stream_info(f"KV_{self.kv.bucket}")
            if not info.state.messages:
                return []  # a watch of an empty bucket would never deliver anything
            last = info.state.last_seq
            async for kv_entry in watcher:
                if kv_entry.operation == "PUT":
                    entry = self._decode(kv_entry)
                    if entry is not None:
                        found.append((kv_entry.key, entry))
                if kv_entry.revision >= last:
                    break
        return found

    async def _remove_where(self, dead: Callable[[str], bool]) -> int:
        removed = 0
        try:
            for key, entry in await self._scan():
                if dead(entry.silo_id) and await self._delete_at(key, entry.revision):
                    removed += 1
        except NatsError as exc:
            raise DirectoryError(
                f"cannot remove dead silos' entries from {self.kv.bucket!r}: {exc}"
            ) from exc
        return removed

    async def _delete_at(self, key: str, revision: int | None) -> bool:
        """Delete *key* if its latest revision is *revision*; False if it changed."""
        assert revision is not None, "entries read from the bucket have a revision"
        try:
            await self.kv.delete(key, revision=revision)
        except WrongLastSequenceError:
            return False
        return True
