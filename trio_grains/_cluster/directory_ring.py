"""The in-cluster grain directory's ring and partitions: who owns which grains' entries.

The in-cluster directory (:mod:`~trio_grains._cluster.distributed_directory`) spreads the
directory's entries over the silos, as Orleans 9's ``DistributedGrainDirectory`` does:

* A :class:`DirectoryRing` is computed by every endpoint from its membership view: the
  *owners* are the ``ACTIVE`` silos (the ``JOINING`` ones while none is active), each
  placed on a hash ring at :data:`POINTS_PER_SILO` points; a grain's entry is owned by the
  first point at or after the hash of its id (blake2b, stable across processes and
  machines). Only the owners' set matters: two views with the same owners give the same
  ring, whatever else (loads, heartbeats) differs. A change of owners moves only the
  entries that must move.
* A :class:`DirectoryPartition` is one silo's share: the entries it owns under its ring.
  It *serves* (registers, looks up, unregisters) only once it is *recovered* for that
  ring: every other live silo of the view has pushed it the entries of its own activations
  that the ring gives this silo. The silos' catalogs are the truth; partitions are an index
  of them, rebuilt on every ring change. An activation's silo keeps its entry (with the
  activation id), so nothing is lost when an owner dies: the survivors push again.

Requests carry the sender's ring key, and a partition refuses a request made under another
ring (the sender refreshes its view and asks again): a registration is accepted only by an
owner whose ring agrees with the registering silo's, and a ring's owner serves only after
the owners of the ring before it have moved on (they pushed to it). So of two silos racing
to activate one grain, exactly one registration is stored, as with an external directory.
The window left is that of any membership protocol: a silo declared dead that still runs
(frozen, cut off) may serve its old share until it fences itself (``dead_after``).

May import: the core up to the catalog and the dispatcher, and the cluster's ``directory``
and ``silo_entries``. Not the messenger or routing.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping

import attrs
import trio

from .._ids import GrainId
from .directory import DirectoryEntry
from .silo_entries import MembershipView, SiloStatus

__all__ = [
    "POINTS_PER_SILO",
    "DirectoryPartition",
    "DirectoryPartitionStatistics",
    "DirectoryRing",
    "grain_hash",
]

POINTS_PER_SILO = 30  # points of each owner on the ring (Orleans uses 30 ranges per silo)
_STASHED_RINGS = 8  # pushes kept for rings this partition has not adopted yet


def _hash64(text: str) -> int:
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def grain_hash(grain_id: GrainId) -> int:
    """The 64-bit position of *grain_id* on the ring (blake2b of its id string)."""
    return _hash64(str(grain_id))


@attrs.frozen(eq=False)
class DirectoryRing:
    """The owners of directory entries under one membership view (see the module doc).

    ``owners``: their silo ids, sorted; ``key``: a 64-bit digest of ``owners`` (what
    requests carry); ``members``: every silo of the view that is not ``DEAD`` (those whose
    pushes a partition waits for).
    """

    owners: tuple[str, ...]
    members: frozenset[str]
    key: int
    _points: list[int] = attrs.field(repr=False)
    _silos: list[str] = attrs.field(repr=False)

    @classmethod
    def of(cls, view: MembershipView, previous: DirectoryRing | None = None) -> DirectoryRing:
        """The ring of *view*; *previous*'s points are reused when the owners are the
        same (views come with every heartbeat: the points are made only on a change)."""
        alive = view.alive()
        owners = [e.silo_id for e in alive if e.status is SiloStatus.ACTIVE]
        if not owners:
            owners = [e.silo_id for e in alive if e.status is SiloStatus.JOINING]
        members = frozenset(e.silo_id for e in alive)
        if previous is not None and previous.owners == tuple(sorted(owners)):
            return attrs.evolve(previous, members=members | frozenset(previous.owners))
        return cls.for_owners(owners, members)

    @classmethod
    def for_owners(cls, owners: Iterable[str], members: Iterable[str] = ()) -> DirectoryRing:
        ordered = tuple(sorted(set(owners)))
        ring = sorted(
            (_hash64(f"{silo}\x00{i}"), silo) for silo in ordered for i in range(POINTS_PER_SILO)
        )
        return cls(
            ordered,
            frozenset(members) | frozenset(ordered),
            _hash64("\x00".join(ordered)) if ordered else 0,
            [point for point, _ in ring],
            [silo for _, silo in ring],
        )

    def owner_of(self, grain_id: GrainId) -> str | None:
        """The silo that owns *grain_id*'s entry; ``None`` if the ring has no owner."""
        if len(self.owners) <= 1:
            return self.owners[0] if self.owners else None  # (a lone silo: no hashing)
        i = bisect.bisect_left(self._points, grain_hash(grain_id))
        return self._silos[i if i < len(self._silos) else 0]


@attrs.frozen
class DirectoryPartitionStatistics:
    """What :meth:`DirectoryPartition.statistics` returns.

    ``entries``: the entries this silo owns; ``ring_key``: the ring it serves (0: none);
    ``recovered``: whether it serves; ``waiting_for``: the silos whose push it still awaits;
    ``rings_adopted``: ring changes so far; ``conflicts``: pushed entries refused because
    another activation of the grain was registered (each such activation is stopped).
    """

    entries: int
    ring_key: int
    recovered: bool
    waiting_for: frozenset[str]
    rings_adopted: int
    conflicts: int


class DirectoryPartition:
    """One silo's share of the in-cluster directory (see the module docstring).

    Everything is synchronous but :meth:`wait_recovered`: the partition is a data
    structure, the directory front (:class:`~trio_grains._cluster.distributed_directory.
    DistributedGrainDirectory`) does the messaging.
    """

    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self.entries: dict[GrainId, DirectoryEntry] = {}
        self.ring: DirectoryRing = DirectoryRing.for_owners(())
        self._recovered = trio.Event()
        self._waiting_for: set[str] = set()
        #: pushes for rings not adopted yet: ring key -> [(view version, sender, entries, done)]
        self._stash: dict[int, list[tuple[int, str, list[DirectoryEntry], bool]]] = {}
        #: the view version at which the ring before this one was adopted: a push for
        #: this ring from before it (a ring can come back: A, B, A) is out of date
        self._since = -1
        self._adopted_at = -1
        self._revision = 0
        self.rings_adopted = 0
        self.conflicts = 0

    # -- the ring -----------------------------------------------------------------------------

    def adopt(
        self, ring: DirectoryRing, local: Iterable[DirectoryEntry], view_version: int
    ) -> None:
        """Serve *ring* (seen in the view *view_version*) from now on; for the same ring,
        take its new members list.

        On a ring change, the entries this silo no longer owns are dropped, its own
        activations' entries (*local*) that it owns are kept, and it waits for the pushes
        of every other member before it serves again.
        """
        if ring.key == self.ring.key and self.ring.owners == ring.owners:
            # Same owners: only members came or went. A member that died owes no push.
            self.ring = ring
            self._waiting_for &= ring.members
            self._check_recovered()
            return
        self.ring = ring
        self.rings_adopted += 1
        self._since, self._adopted_at = self._adopted_at, view_version
        if self._recovered.is_set():
            self._recovered = trio.Event()
        mine = self.self_id
        self.entries = {g: e for g, e in self.entries.items() if ring.owner_of(g) == mine}
        for entry in local:
            if ring.owner_of(entry.grain_id) == mine:
                self.entries[entry.grain_id] = entry
        self._waiting_for = set(ring.members) - {mine}
        stashed = self._stash.pop(ring.key, [])
        for key in [k for k, pushes in self._stash.items() if pushes[-1][0] <= view_version]:
            del self._stash[key]  # pushes for rings before this one
        for version, sender, entries, done in stashed:
            self.pushed(ring.key, sender, entries, done, version)
        self._check_recovered()

    def _check_recovered(self) -> None:
        if not self._waiting_for and self.ring.owners and not self._recovered.is_set():
            self._recovered.set()

    @property
    def recovered(self) -> bool:
        return self._recovered.is_set()

    async def wait_recovered(self) -> None:
        await self._recovered.wait()

    def pushed(
        self,
        ring_key: int,
        sender: str,
        entries: list[DirectoryEntry],
        done: bool,
        view_version: int,
    ) -> list[DirectoryEntry]:
        """Take a push of *sender*'s entries for the ring *ring_key*, which *sender* saw
        in the view *view_version*; the entries refused (another activation of their
        grain is registered here)."""
        if ring_key != self.ring.key:
            if view_version > self._adopted_at:  # a ring this silo has not seen yet
                if len(self._stash) >= _STASHED_RINGS and ring_key not in self._stash:
                    self._stash.pop(next(iter(self._stash)))
                self._stash.setdefault(ring_key, []).append((view_version, sender, entries, done))
            return []
        if view_version <= self._since:
            return []  # made for an earlier time this ring was the ring
        refused = self.merge(entries)
        if done:
            self._waiting_for.discard(sender)
            self._check_recovered()
        return refused

    def merge(self, entries: Iterable[DirectoryEntry]) -> list[DirectoryEntry]:
        refused = []
        for entry in entries:
            held = self.entries.get(entry.grain_id)
            if held is None or held.silo_id == entry.silo_id:
                self.entries[entry.grain_id] = self._stamp(entry)
            elif not held.same_activation(entry):
                refused.append(entry)
                self.conflicts += 1
        return refused

    def _stamp(self, entry: DirectoryEntry) -> DirectoryEntry:
        self._revision += 1
        return DirectoryEntry(entry.grain_id, entry.silo_id, entry.activation_id, self._revision)

    # -- serving (only while recovered) ---------------------------------------------------------

    def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        """Create-if-absent: the stored entry (*entry*'s, or the one that was there)."""
        held = self.entries.get(entry.grain_id)
        if held is not None:
            return held
        stored = self.entries[entry.grain_id] = self._stamp(entry)
        return stored

    def lookup(self, grain_id: GrainId) -> DirectoryEntry | None:
        return self.entries.get(grain_id)

    def unregister(self, entry: DirectoryEntry) -> bool:
        held = self.entries.get(entry.grain_id)
        if held is None or not held.same_activation(entry):
            return False
        del self.entries[entry.grain_id]
        return True

    def remove_silos(self, dead: Mapping[str, object] | frozenset[str] | set[str]) -> int:
        """Drop the entries of the silos in *dead*; how many."""
        doomed = [g for g, e in self.entries.items() if e.silo_id in dead]
        for grain_id in doomed:
            del self.entries[grain_id]
        self._waiting_for -= set(dead)
        self._check_recovered()
        return len(doomed)

    def statistics(self) -> DirectoryPartitionStatistics:
        return DirectoryPartitionStatistics(
            entries=len(self.entries),
            ring_key=self.ring.key,
            recovered=self.recovered,
            waiting_for=frozenset(self._waiting_for),
            rings_adopted=self.rings_adopted,
            conflicts=self.conflicts,
        )
