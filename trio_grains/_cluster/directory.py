"""The grain directory: which silo hosts the activation of each grain, cluster-wide.

A silo that is about to activate a grain first *registers* a :class:`DirectoryEntry`
(grain, silo, a fresh activation id). Registration is create-if-absent: of many silos
racing to activate one grain, exactly one entry is stored and every racer gets *that*
entry back, so a loser knows where to forward its queued calls. This is what makes single
activation strict, as in Orleans' grain directory.

* An activation that deactivates *unregisters* its entry; the activation id makes this
  safe: a stale unregister (an older activation of the same grain on any silo) never
  removes a newer activation's entry.
* When membership declares a silo dead, a survivor calls :meth:`GrainDirectory.remove_silo`
  (or :meth:`~GrainDirectory.remove_silos_not_in` with the live view), so its grains can be
  activated elsewhere.
* Lookups are cached per silo (:class:`DirectoryCache`, :class:`CachedDirectory`). A cache
  is only as fresh as its invalidations: the runtime invalidates a grain when a call is
  answered "not here" (and forwards it) and a whole silo when membership drops it.

Providers implement :class:`GrainDirectory`; :class:`MemoryGrainDirectory` serves a
single process (tests, one-silo deployments), ``trio_grains_nats.directory`` a cluster.
A provider that stores entries as bytes uses the core's row format
(:func:`encode_directory_entry`, :func:`decode_directory_entry`: bounds, strict fields) and
:class:`~trio_grains._rows.MalformedRows` to skip, count and log the entries that do not
decode; :func:`trio_grains.testing.check_grain_directory` checks every rule below.

May import: the core up to the catalog and the dispatcher. Not the other cluster modules:
the contracts are the bottom of the cluster.
"""

from __future__ import annotations

import abc
import itertools
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Set

import attrs
import trio

from .._exceptions import DirectoryError
from .._ids import GrainId
from .._rows import load_json_object, text_field

__all__ = [
    "CachedDirectory",
    "DirectoryCache",
    "DirectoryCacheStatistics",
    "DirectoryEntry",
    "DirectoryError",
    "GrainDirectory",
    "MemoryGrainDirectory",
    "decode_directory_entry",
    "encode_directory_entry",
    "new_activation_id",
]


_PROCESS_ID = uuid.uuid4().hex[:16]  # random per process (and re-drawn after a fork)
_counter = itertools.count(1)


def _reseed_after_fork() -> None:
    global _PROCESS_ID
    _PROCESS_ID = uuid.uuid4().hex[:16]


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reseed_after_fork)


def new_activation_id() -> str:
    """A fresh, cluster-unique activation id: 16 random hex digits drawn once per process,
    then 16 of a counter (32 lowercase hex digits). Cheaper than a uuid4 per activation,
    which costs a system call for its randomness."""
    return f"{_PROCESS_ID}{next(_counter):016x}"


def _check_non_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"DirectoryEntry.{attribute.name} must be a non-empty str, got {value!r}")


@attrs.frozen
class DirectoryEntry:
    """One registration: *grain_id* is activated on *silo_id* as *activation_id*.

    ``activation_id`` is unique per activation (:func:`new_activation_id`), so two
    activations of one grain, even on the same silo, are told apart. ``revision`` is set by
    the directory when the entry is stored (``None`` before); it differs between successive
    registrations of one grain.
    """

    grain_id: GrainId
    silo_id: str = attrs.field(validator=_check_non_empty)
    activation_id: str = attrs.field(validator=_check_non_empty)
    revision: int | None = None

    @classmethod
    def new(cls, grain_id: GrainId, silo_id: str) -> DirectoryEntry:
        """An entry for a new activation of *grain_id* on *silo_id* (fresh activation id)."""
        return cls(grain_id, silo_id, new_activation_id())

    def same_activation(self, other: DirectoryEntry) -> bool:
        """True if *other* names the same activation (revisions are not compared)."""
        return self.grain_id == other.grain_id and self.activation_id == other.activation_id


def _token(grain_id: GrainId) -> str:
    return grain_id.token


def encode_directory_entry(entry: DirectoryEntry) -> bytes:
    """The stored bytes of *entry* (JSON; ``revision`` left out: the store gives it)."""
    return json.dumps(
        {"grain": str(entry.grain_id), "silo": entry.silo_id, "activation": entry.activation_id},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def decode_directory_entry(
    key: str, data: bytes, revision: int, key_of: Callable[[GrainId], str] = _token
) -> DirectoryEntry:
    """The entry stored as *data* under the store's key *key* at *revision*.

    Raises :class:`DirectoryError`, and nothing else, if *data* is not an entry of the
    grain whose key is *key* (``key_of(grain_id)``, by default ``grain_id.token``): more
    than 64 KiB, not a JSON object, a field missing, empty or not a string, a grain id that
    does not parse or has another key. Unknown fields are ignored.
    """
    try:
        body = load_json_object(data)
        grain_id = GrainId.parse(text_field(body, "grain"))
        entry = DirectoryEntry(
            grain_id, text_field(body, "silo"), text_field(body, "activation"), revision
        )
        if key_of(grain_id) != key:
            raise ValueError(f"it names grain {str(grain_id)[:80]!r}, whose key is not this one")
    except Exception as exc:  # ValueError from the checks; anything else is malformed too
        raise DirectoryError(
            f"unreadable directory entry {key[:200]!r} (revision {revision}): {exc}; "
            "delete the key, or register the grain again to replace it"
        ) from None
    return entry


class GrainDirectory(abc.ABC):
    """The contract of a grain directory provider.

    Entries are keyed by ``grain_id``; at most one is stored per grain. Providers translate
    their backend's errors into :class:`DirectoryError`, take no timeout or cancellation
    parameters (callers use Trio cancel scopes) and must be safe to cancel: a cancelled
    :meth:`register` either stored the entry or did not, and calling it again with the
    *same* entry returns the stored one, so retrying is always safe.

    Directories of different clusters never see each other's entries; instances opened
    on one cluster's backend (in any number of processes) share them.

    A shared backend can hold entries this directory did not write: decode them with
    :func:`decode_directory_entry` (bounds, strict fields) and treat one that does not
    decode as no entry, counted (``malformed_rows``, with
    :class:`~trio_grains.MalformedRows`) and logged once: :meth:`lookup` returns ``None``,
    scans skip it, :meth:`unregister` leaves it, :meth:`register` replaces it (it names no
    activation anyone can reach).

    :func:`trio_grains.testing.check_grain_directory` checks these rules.
    """

    @abc.abstractmethod
    async def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        """Store *entry* unless the grain already has one; return the stored entry.

        The result is *entry* with its ``revision`` set when this call won, or the entry
        another activation registered first (compare with
        :meth:`DirectoryEntry.same_activation`). ``entry.revision`` is ignored. Of any
        number of concurrent calls for one grain, from any number of silos, exactly one
        wins and all of them return the winner's entry.
        """

    @abc.abstractmethod
    async def lookup(self, grain_id: GrainId) -> DirectoryEntry | None:
        """The stored entry of *grain_id* (revision set), or ``None`` if it has none."""

    @abc.abstractmethod
    async def unregister(self, entry: DirectoryEntry) -> bool:
        """Remove the grain's entry if it is still *entry*'s activation; True if removed.

        Matching is by ``activation_id`` (``entry.revision`` is ignored): an unregister
        from an activation that has since been replaced removes nothing and returns False.
        """

    @abc.abstractmethod
    async def remove_silo(self, silo_id: str) -> int:
        """Remove every entry registered by *silo_id* (a dead silo); the number removed.

        May be O(number of entries) (a key-value provider scans its bucket). Entries that
        change while this runs are left alone unless they still belong to *silo_id*.
        """

    @abc.abstractmethod
    async def remove_silos_not_in(self, live: Set[str]) -> int:
        """Remove every entry whose silo is not in *live*; the number removed.

        Pass the whole membership view, joining silos included: an entry of a silo missing
        from *live* is removed even if that silo is alive. O(number of entries) like
        :meth:`remove_silo`.
        """


@attrs.define(eq=False)
class MemoryGrainDirectory(GrainDirectory):
    """A directory in this process's memory: for tests and single-process clusters."""

    _entries: dict[GrainId, DirectoryEntry] = attrs.field(factory=dict, init=False)
    _revision: int = attrs.field(default=0, init=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        await trio.lowlevel.checkpoint()
        existing = self._entries.get(entry.grain_id)
        if existing is not None:
            return existing
        self._revision += 1
        stored = attrs.evolve(entry, revision=self._revision)
        self._entries[entry.grain_id] = stored
        return stored

    async def lookup(self, grain_id: GrainId) -> DirectoryEntry | None:
        await trio.lowlevel.checkpoint()
        return self._entries.get(grain_id)

    async def unregister(self, entry: DirectoryEntry) -> bool:
        await trio.lowlevel.checkpoint()
        existing = self._entries.get(entry.grain_id)
        if existing is None or existing.activation_id != entry.activation_id:
            return False
        del self._entries[entry.grain_id]
        return True

    async def remove_silo(self, silo_id: str) -> int:
        return await self._remove_where(lambda silo: silo == silo_id)

    async def remove_silos_not_in(self, live: Set[str]) -> int:
        return await self._remove_where(lambda silo: silo not in live)

    async def _remove_where(self, dead: Callable[[str], bool]) -> int:
        await trio.lowlevel.checkpoint()
        doomed = [gid for gid, e in self._entries.items() if dead(e.silo_id)]
        for gid in doomed:
            del self._entries[gid]
        return len(doomed)


# --- the per-silo cache ------------------------------------------------------------------


@attrs.frozen
class DirectoryCacheStatistics:
    """What :meth:`DirectoryCache.statistics` returns."""

    size: int
    max_size: int
    hits: int
    misses: int
    evictions: int


@attrs.define(eq=False)
class DirectoryCache:
    """A bounded LRU cache of directory entries, one per silo.

    Only found entries are cached ("no entry" is not: the grain may be activated any
    moment). When full, the least recently used entry is evicted.
    """

    max_size: int = 100_000
    _entries: OrderedDict[GrainId, DirectoryEntry] = attrs.field(factory=OrderedDict, init=False)
    _by_silo: dict[str, set[GrainId]] = attrs.field(factory=dict, init=False)
    _hits: int = attrs.field(default=0, init=False)
    _misses: int = attrs.field(default=0, init=False)
    _evictions: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"DirectoryCache.max_size must be >= 1, got {self.max_size}")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, grain_id: object) -> bool:
        return grain_id in self._entries

    def peek(self, grain_id: GrainId) -> DirectoryEntry | None:
        """The cached entry or ``None``, without counting a hit or touching the LRU order."""
        return self._entries.get(grain_id)

    def get(self, grain_id: GrainId) -> DirectoryEntry | None:
        """The cached entry (now the most recently used), or ``None``."""
        entry = self._entries.get(grain_id)
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(grain_id)
        return entry

    def put(self, entry: DirectoryEntry) -> None:
        """Cache *entry*, replacing the grain's previous one; evict the LRU entry if full."""
        self._discard(entry.grain_id)
        self._entries[entry.grain_id] = entry
        self._by_silo.setdefault(entry.silo_id, set()).add(entry.grain_id)
        while len(self._entries) > self.max_size:
            oldest = next(iter(self._entries))
            self._discard(oldest)
            self._evictions += 1

    def invalidate(self, grain_id: GrainId) -> bool:
        """Forget the grain's entry; True if one was cached."""
        return self._discard(grain_id)

    def invalidate_silo(self, silo_id: str) -> int:
        """Forget every entry of *silo_id*; the number forgotten."""
        grains = self._by_silo.pop(silo_id, set())
        for grain_id in grains:
            del self._entries[grain_id]
        return len(grains)

    def invalidate_silos_not_in(self, live: Set[str]) -> int:
        """Forget every entry of a silo not in *live*; the number forgotten."""
        return sum(self.invalidate_silo(silo) for silo in list(self._by_silo) if silo not in live)

    def clear(self) -> None:
        self._entries.clear()
        self._by_silo.clear()

    def statistics(self) -> DirectoryCacheStatistics:
        return DirectoryCacheStatistics(
            size=len(self._entries),
            max_size=self.max_size,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
        )

    def _discard(self, grain_id: GrainId) -> bool:
        entry = self._entries.pop(grain_id, None)
        if entry is None:
            return False
        grains = self._by_silo.get(entry.silo_id)
        if grains is not None:
            grains.discard(grain_id)
            if not grains:
                del self._by_silo[entry.silo_id]
        return True


@attrs.define(eq=False)
class CachedDirectory(GrainDirectory):
    """*directory* behind this silo's :class:`DirectoryCache`.

    Lookups are answered from the cache when they can. This silo's own register,
    unregister and removals keep the cache coherent; changes made by other silos are seen
    only after :meth:`DirectoryCache.invalidate` / ``invalidate_silo`` (the runtime calls
    them when a call is answered "not here" and on membership changes), or through
    :meth:`lookup` with ``cached=False``.
    """

    directory: GrainDirectory
    cache: DirectoryCache = attrs.field(factory=DirectoryCache)

    async def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        winner = await self.directory.register(entry)
        self.cache.put(winner)
        return winner

    async def lookup(self, grain_id: GrainId, *, cached: bool = True) -> DirectoryEntry | None:
        """The entry, from the cache if *cached* and present, else from the directory."""
        if cached:
            hit = self.cache.get(grain_id)
            if hit is not None:
                return hit
        entry = await self.directory.lookup(grain_id)
        if entry is None:
            self.cache.invalidate(grain_id)
        else:
            self.cache.put(entry)
        return entry

    async def unregister(self, entry: DirectoryEntry) -> bool:
        self.forget(entry)
        try:
            return await self.directory.unregister(entry)
        finally:
            # Again: a lookup that ran meanwhile may have cached the entry being removed.
            self.forget(entry)

    async def remove_silo(self, silo_id: str) -> int:
        self.cache.invalidate_silo(silo_id)
        try:
            return await self.directory.remove_silo(silo_id)
        finally:
            self.cache.invalidate_silo(silo_id)

    async def remove_silos_not_in(self, live: Set[str]) -> int:
        self.cache.invalidate_silos_not_in(live)
        try:
            return await self.directory.remove_silos_not_in(live)
        finally:
            self.cache.invalidate_silos_not_in(live)

    def forget(self, entry: DirectoryEntry) -> None:
        """Drop *entry* from the cache if the cache holds that very activation."""
        cached = self.cache.peek(entry.grain_id)
        if cached is not None and cached.activation_id == entry.activation_id:
            self.cache.invalidate(entry.grain_id)
