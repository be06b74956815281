"""Spreading work over the live silos of a cluster: rendezvous hashing and partition leases.

**Who owns what.** Every silo computes ownership locally from its membership view with
*rendezvous* (highest-random-weight) hashing: the owner of a key is the silo with the
largest ``blake2b(silo + "\\x00" + key)``. The hash is stable across processes, machines
and Python versions (never ``hash()``), so silos with equal views agree, and a change of
membership moves only what it must: a joining silo takes keys only for itself, a leaving
silo's keys are spread over the others, everything else stays put.
:func:`owned_partitions` applies it to the partitions of a stream provider,
:func:`owner_filter_for` to grains (for reminders).

**Strict hand-over of stream partitions.** Views of different silos are not updated at the
same instant, and a silo that loses a partition must first drain it (finish the items it
holds, give the rest back). So computing ownership is not enough: two silos could pull one
partition for a while, and items of one stream key could be handled out of order. A
:class:`PartitionBalancer` therefore holds a *lease* for each partition it pulls: a grain
directory entry for the lease id :func:`partition_lease_id` (create-if-absent, so at most one
silo holds it). It

1. *releases* first: it stops pulling the partitions it no longer wants
   (``set_owned``, which drains them), and only then unregisters their leases;
2. *acquires* the partitions it wants by registering their leases; a partition whose lease
   is held by a live silo (still draining) is retried every ``retry_interval``; a lease held
   by a silo that the view shows ``DEAD`` is removed and taken over at once;
3. pulls (``set_owned``) exactly the partitions whose leases it holds.

A silo that is not ``ACTIVE`` in its view wants nothing. A lease whose holder is missing
from the view is treated as live (the view may simply lag behind the holder's), so it is
only taken over once that silo is seen ``DEAD`` or the lease is removed from the directory.
Directory failures are logged and retried; the state kept between passes (leases held,
pending acquisitions with their activation ids) makes every step safe to repeat.

May import: the core up to the catalog and the dispatcher, and the cluster modules below it.
Not reminders or streams: it makes a filter for the one, is handed ``set_owned`` by the other.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from .._exceptions import DirectoryError
from .._ids import GrainId
from .directory import DirectoryEntry, GrainDirectory, new_activation_id
from .silo_entries import MembershipView, SiloStatus

__all__ = [
    "PARTITION_LEASE_TYPE",
    "PartitionBalancer",
    "PartitionBalancerStatistics",
    "owned_partitions",
    "owner_filter_for",
    "partition_lease_id",
    "rendezvous_owner",
]

log = logging.getLogger("trio_grains.ownership")

PARTITION_LEASE_TYPE = "sys.stream-partition"
"""The reserved grain type of partition leases in the grain directory."""

_PARTITION_KEY_PREFIX = "partition/"
_TAKEOVER_ATTEMPTS = 3  # register/remove-dead rounds per partition and pass
_RELEASE_ROUNDS = 3  # release_all's attempts at unregistering what is left


def _weight(silo: str, key: str) -> int:
    data = f"{silo}\x00{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def rendezvous_owner(key: str, silos: Sequence[str]) -> str | None:
    """The silo of *silos* that owns *key* (highest random weight); ``None`` if none.

    Ties (practically impossible) go to the larger silo id, so the order of *silos* never
    matters.
    """
    if not silos:
        return None
    return max(silos, key=lambda silo: (_weight(silo, key), silo))


def owned_partitions(silo_id: str, silos: Sequence[str], partitions: int) -> frozenset[int]:
    """The partitions ``0 .. partitions - 1`` that *silo_id* owns among *silos*.

    Rendezvous hashing with bounded loads: partition by partition, the silo of highest
    weight that holds fewer than ``ceil(partitions / len(silos))`` takes it. Plain
    rendezvous hashing often split 8 partitions 6 / 2 over two silos (one silo doing
    half as much again as its share); bounded, no silo holds more than its share
    rounded up, and a change of silos still moves few partitions.
    """
    if not silos:
        return frozenset()
    ordered = sorted(set(silos))
    cap = -(-partitions // len(ordered))
    load = dict.fromkeys(ordered, 0)
    owned = []
    for p in range(partitions):
        key = f"{_PARTITION_KEY_PREFIX}{p}"
        ranked = sorted(ordered, key=lambda silo: (_weight(silo, key), silo), reverse=True)
        owner = next(silo for silo in ranked if load[silo] < cap)
        load[owner] += 1
        if owner == silo_id:
            owned.append(p)
    return frozenset(owned)


def owner_filter_for(silo_id: str, view: MembershipView) -> Callable[[GrainId], bool]:
    """A predicate: does *silo_id* own the grain among the ``ACTIVE`` silos of *view*?"""
    active = [entry.silo_id for entry in view.active()]

    def owns(grain_id: GrainId) -> bool:
        return rendezvous_owner(str(grain_id), active) == silo_id

    return owns


def partition_lease_id(provider: str, partition: int) -> GrainId:
    """The directory id of the lease on *partition* of stream provider *provider*."""
    return GrainId.create(PARTITION_LEASE_TYPE, f"{provider}/{partition}")


@attrs.frozen
class PartitionBalancerStatistics:
    """What :meth:`PartitionBalancer.statistics` returns.

    ``owned``: partitions being pulled; ``wanted``: the share this silo should pull under its
    latest view; ``waiting``: wanted partitions whose lease it could not get yet (held by a
    live silo, or the directory failed); ``moves``: partitions added to or removed from
    ``owned`` so far.
    """

    owned: frozenset[int]
    wanted: frozenset[int]
    waiting: frozenset[int]
    moves: int


@attrs.define(eq=False)
class PartitionBalancer:
    """Keeps this silo's share of one stream provider's partitions, handed over by leases.

    Start :meth:`run` in a nursery and feed it every membership view with :meth:`update`;
    call :meth:`release_all` on shutdown. *set_owned* is
    ``StreamProvider.set_owned_partitions`` in a silo: it must return only once partitions
    it no longer gets have stopped being pulled. The first pass calls it even with no
    partitions, but the provider should not pull anything before that (it holds no lease).
    """

    provider_name: str
    partitions: int
    silo_id: str
    directory: GrainDirectory
    set_owned: Callable[[frozenset[int]], Awaitable[None]]
    retry_interval: float = 0.5
    #: asked about a lease holder missing from the view (it may be newer than the view,
    #: or long gone); ``None``: such a holder counts as alive
    alive: Callable[[str], Awaitable[bool]] | None = None
    #: seconds to wait before pulling a partition whose owner died (the adapter's
    #: ``takeover_delay``: its held items must come back before newer ones)
    takeover_delay: float = 0.0
    _hold_until: float = attrs.field(default=-math.inf, init=False)
    _view: MembershipView | None = attrs.field(default=None, init=False)
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _owned: frozenset[int] = attrs.field(default=frozenset(), init=False)
    _leases: dict[int, DirectoryEntry] = attrs.field(factory=dict, init=False)
    _attempts: dict[int, DirectoryEntry] = attrs.field(factory=dict, init=False)
    _wanted: frozenset[int] = attrs.field(default=frozenset(), init=False)
    _waiting: frozenset[int] = attrs.field(default=frozenset(), init=False)
    _moves: int = attrs.field(default=0, init=False)
    _stopped: bool = attrs.field(default=False, init=False)
    _synced: bool = attrs.field(default=False, init=False)  # set_owned called at least once

    def __attrs_post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"PartitionBalancer.partitions must be >= 1, got {self.partitions}")
        if not self.retry_interval > 0:
            raise ValueError(f"retry_interval must be > 0 seconds, got {self.retry_interval}")

    @property
    def owned(self) -> frozenset[int]:
        """The partitions this silo pulls (as last passed to ``set_owned``)."""
        return self._owned

    def statistics(self) -> PartitionBalancerStatistics:
        return PartitionBalancerStatistics(self._owned, self._wanted, self._waiting, self._moves)

    def update(self, view: MembershipView) -> None:
        """Take *view* as the current membership and wake :meth:`run` to reconcile."""
        # A silo died: whatever partitions it held (by their leases, which need not be its
        # hash share: it may have died while handing one over) wait until its items come
        # back. So every partition this silo gains for a while waits.
        old = self._view
        if (
            old is not None
            and self.takeover_delay > 0
            and any(
                view.status_of(entry.silo_id) is SiloStatus.DEAD
                for entry in old.entries.values()
                if entry.alive
            )
        ):
            self._hold_until = trio.current_time() + self.takeover_delay
        self._view = view
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile on every view change, and every ``retry_interval`` while waiting."""
        task_status.started()
        while True:
            self._wake = trio.Event()  # an update during the pass sets the new event
            async with self._lock:
                retry = await self._reconcile()
            if retry:
                with trio.move_on_after(self.retry_interval):
                    await self._wake.wait()
            else:
                await self._wake.wait()

    async def release_all(self) -> None:
        """Stop pulling, then give up every lease (for shutdown; :meth:`run` idles after)."""
        async with self._lock:
            self._stopped = True
            self._wanted = self._waiting = frozenset()
            await self._set(frozenset())
            for round_ in range(_RELEASE_ROUNDS):
                try:
                    await self._drop_leases(frozenset())
                    return
                except DirectoryError as exc:
                    if round_ + 1 == _RELEASE_ROUNDS:
                        log.error(
                            "stream provider %r: could not release partition leases %s: %s",
                            self.provider_name,
                            sorted(set(self._leases) | set(self._attempts)),
                            exc,
                        )
                        return
                await trio.sleep(self.retry_interval)

    # -- reconciling --------------------------------------------------------------------------

    def _desired(self, view: MembershipView | None) -> frozenset[int]:
        if self._stopped or view is None or view.status_of(self.silo_id) is not SiloStatus.ACTIVE:
            return frozenset()
        active = [entry.silo_id for entry in view.active()]
        return owned_partitions(self.silo_id, active, self.partitions)

    async def _reconcile(self) -> bool:
        """One pass; True if it should be repeated after ``retry_interval``."""
        try:
            return await self._reconcile_once()
        except DirectoryError as exc:
            log.warning(
                "stream provider %r: partition balancing failed, retrying: %s",
                self.provider_name,
                exc,
            )
            return True

    async def _reconcile_once(self) -> bool:
        view = self._view
        desired = self._wanted = self._desired(view)
        # 1. release: stop pulling (drains), and only then give the leases up
        if self._owned - desired:
            await self._set(self._owned & desired)
        await self._drop_leases(desired)
        # 2. acquire
        waiting: set[int] = set()
        failure: DirectoryError | None = None
        for partition in sorted(desired - set(self._leases)):
            try:
                if not await self._acquire(partition, view):
                    waiting.add(partition)
            except DirectoryError as exc:
                waiting.add(partition)
                failure = exc
        self._waiting = frozenset(waiting)
        # 3. pull what is held (a dead silo's partitions once its items are back)
        gained = (desired & set(self._leases)) - self._owned
        if gained and trio.current_time() < self._hold_until:
            waiting.update(gained)
            self._waiting = frozenset(waiting)
            gained = frozenset()
        if gained or not self._synced:
            await self._set(self._owned | gained)
        if failure is not None:
            raise failure  # logged by _reconcile; retried
        return bool(waiting)

    async def _set(self, owned: frozenset[int]) -> None:
        if owned == self._owned and self._synced:
            return
        await self.set_owned(owned)
        self._synced = True
        self._moves += len(owned ^ self._owned)
        self._owned = owned

    async def _drop_leases(self, keep: frozenset[int]) -> None:
        """Unregister held leases and pending attempts of partitions not in *keep*."""
        for partition in sorted(set(self._leases) - keep - self._owned):
            await self.directory.unregister(self._leases[partition])
            del self._leases[partition]
        for partition in sorted(set(self._attempts) - keep):
            # a cancelled register may have stored it: remove it in case
            await self.directory.unregister(self._attempts[partition])
            del self._attempts[partition]

    async def _acquire(self, partition: int, view: MembershipView | None) -> bool:
        entry = self._attempts.get(partition)
        if entry is None:
            lease_id = partition_lease_id(self.provider_name, partition)
            entry = DirectoryEntry(lease_id, self.silo_id, new_activation_id())
            self._attempts[partition] = entry
        for _ in range(_TAKEOVER_ATTEMPTS):
            winner = await self.directory.register(entry)
            if winner.same_activation(entry):
                self._leases[partition] = winner
                del self._attempts[partition]
                return True
            if not await self._stale(winner, view):
                return False  # a live holder is still draining it
            log.info(
                "stream provider %r: taking partition %d over from silo %r",
                self.provider_name,
                partition,
                winner.silo_id,
            )
            await self.directory.unregister(winner)
        return False

    async def _stale(self, lease: DirectoryEntry, view: MembershipView | None) -> bool:
        """A lease of a dead or departed silo, or a leftover of an earlier balancer of
        this silo."""
        if lease.silo_id == self.silo_id:
            return True
        status = None if view is None else view.status_of(lease.silo_id)
        if status is None and self.alive is not None:
            return not await self.alive(lease.silo_id)
        return status is SiloStatus.DEAD
