"""Spreading work over silos: rendezvous hashing, and stream partitions handed over by
leases in the grain directory (PartitionBalancer), on Trio's MockClock."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Set

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_grains import DirectoryError, GrainId
from trio_grains._cluster.directory import DirectoryEntry, GrainDirectory, MemoryGrainDirectory
from trio_grains._cluster.ownership import (
    PartitionBalancer,
    owned_partitions,
    owner_filter_for,
    partition_lease_id,
    rendezvous_owner,
)
from trio_grains._cluster.silo_entries import MembershipView, SiloEntry, SiloStatus

# --- rendezvous hashing ---------------------------------------------------------------------

silo_ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True)
keys = st.lists(st.text(max_size=20), min_size=1, max_size=50)


@given(silo_ids, keys)
def test_every_key_has_exactly_one_owner(silos: list[str], keys: list[str]) -> None:
    for key in keys:
        owner = rendezvous_owner(key, silos)
        assert owner in silos
        assert rendezvous_owner(key, list(reversed(silos))) == owner  # order does not matter


def test_no_silos_no_owner() -> None:
    assert rendezvous_owner("k", []) is None
    assert owned_partitions("a", [], 8) == frozenset()


def test_the_hash_is_stable() -> None:
    # fixed across processes and Python versions (blake2b, not hash())
    assert [rendezvous_owner(f"k{i}", ["a", "b", "c"]) for i in range(8)] == [
        rendezvous_owner(f"k{i}", ["c", "a", "b"]) for i in range(8)
    ]
    assert owned_partitions("a", ["a", "b"], 16) | owned_partitions("b", ["a", "b"], 16) == set(
        range(16)
    )
    assert rendezvous_owner("cart/bob", ["silo-1", "silo-2", "silo-3"]) == rendezvous_owner(
        "cart/bob", ["silo-3", "silo-2", "silo-1"]
    )


@given(silo_ids, st.text(min_size=1, max_size=12), keys)
def test_adding_a_silo_moves_keys_only_to_it(silos: list[str], new: str, keys: list[str]) -> None:
    if new in silos:
        return
    for key in keys:
        before = rendezvous_owner(key, silos)
        after = rendezvous_owner(key, [*silos, new])
        assert after in (before, new)


@given(silo_ids, keys)
def test_removing_a_silo_moves_only_its_keys(silos: list[str], keys: list[str]) -> None:
    gone, rest = silos[0], silos[1:]
    for key in keys:
        before = rendezvous_owner(key, silos)
        after = rendezvous_owner(key, rest)
        if before != gone:
            assert after == before
        else:
            assert after in rest or not rest


@given(st.lists(st.text(min_size=1, max_size=12), min_size=3, max_size=3, unique=True))
def test_keys_are_roughly_balanced(silos: list[str]) -> None:
    counts = dict.fromkeys(silos, 0)
    for i in range(3000):
        owner = rendezvous_owner(f"grain/{i}", silos)
        assert owner is not None
        counts[owner] += 1
    assert all(0.20 * 3000 <= n <= 0.47 * 3000 for n in counts.values()), counts


@given(silo_ids, st.integers(min_value=1, max_value=64))
def test_partitions_are_split_disjointly(silos: list[str], partitions: int) -> None:
    shares = [owned_partitions(silo, silos, partitions) for silo in silos]
    assert sum(len(s) for s in shares) == partitions
    assert frozenset().union(*shares) == set(range(partitions))
    assert owned_partitions("not-a-member", silos, partitions) == frozenset()


def test_owner_filter_uses_the_active_silos() -> None:
    view = make_view(a=SiloStatus.ACTIVE, b=SiloStatus.ACTIVE, c=SiloStatus.JOINING)
    grains = [GrainId.create("cart", i) for i in range(200)]
    a, b, c = (owner_filter_for(s, view) for s in "abc")
    for grain in grains:
        assert a(grain) != b(grain)
        assert not c(grain)
        assert a(grain) == (rendezvous_owner(str(grain), ["a", "b"]) == "a")
    assert any(a(g) for g in grains)
    assert any(b(g) for g in grains)


def test_partition_lease_ids() -> None:
    lease = partition_lease_id("events", 3)
    assert str(lease) == "sys.stream-partition/events/3"
    assert GrainId.parse(str(lease)) == lease
    assert partition_lease_id("events", 3) != partition_lease_id("other", 3)


# --- the balancer ---------------------------------------------------------------------------

PARTITIONS = 12
DRAIN = 2.0  # seconds a fake set_owned takes to drain a partition it gives up


def make_view(version: int = 1, **statuses: SiloStatus) -> MembershipView:
    return MembershipView(
        {silo: SiloEntry(silo, f"addr-{silo}", status) for silo, status in statuses.items()},
        version,
    )


@attrs.define(eq=False)
class Pullers:
    """The fake stream providers of several silos: which silo pulls each partition.

    A partition given up is still pulled while it drains; taking a partition that another
    silo still pulls is the bug the leases prevent, so it fails the test right there.
    """

    pulling: dict[int, str] = attrs.field(factory=dict)
    calls: dict[str, list[frozenset[int]]] = attrs.field(factory=dict)

    def set_owned_for(self, silo: str) -> Callable[[frozenset[int]], Awaitable[None]]:
        self.calls[silo] = []

        async def set_owned(owned: frozenset[int]) -> None:
            self.calls[silo].append(owned)
            mine = {p for p, s in self.pulling.items() if s == silo}
            if mine - owned:
                await trio.sleep(DRAIN)
                for p in mine - owned:
                    del self.pulling[p]
            for p in owned - mine:
                assert p not in self.pulling, f"{silo} takes partition {p} from {self.pulling[p]}"
                self.pulling[p] = silo

        return set_owned


def check_disjoint(balancers: Iterable[PartitionBalancer]) -> None:
    seen: set[int] = set()
    for balancer in balancers:
        assert not (balancer.owned & seen)
        seen |= balancer.owned


def leases(directory: MemoryGrainDirectory) -> dict[GrainId, str]:
    return {gid: entry.silo_id for gid, entry in directory._entries.items()}


async def settle(balancers: Iterable[PartitionBalancer], seconds: float = 10.0) -> None:
    """Let time pass in small steps, checking that no partition is owned twice."""
    balancers = list(balancers)
    for _ in range(int(seconds * 10)):
        await trio.sleep(0.1)
        check_disjoint(balancers)


def new_balancer(
    silo: str, directory: GrainDirectory, pullers: Pullers, **kw: float
) -> PartitionBalancer:
    return PartitionBalancer(
        "events", PARTITIONS, silo, directory, pullers.set_owned_for(silo), **kw
    )


async def test_two_silos_split_the_partitions(autojump_clock: trio.testing.MockClock) -> None:
    directory, pullers = MemoryGrainDirectory(), Pullers()
    a, b = new_balancer("a", directory, pullers), new_balancer("b", directory, pullers)
    view = make_view(a=SiloStatus.ACTIVE, b=SiloStatus.ACTIVE)
    async with trio.open_nursery() as nursery:
        for balancer in (a, b):
            balancer.update(view)
            await nursery.start(balancer.run)
        await settle([a, b])
        assert a.owned == owned_partitions("a", ["a", "b"], PARTITIONS)
        assert b.owned == owned_partitions("b", ["a", "b"], PARTITIONS)
        assert a.owned | b.owned == set(range(PARTITIONS))
        assert a.owned
        assert b.owned
        assert len(directory) == PARTITIONS
        assert pullers.calls["a"] == [a.owned]  # one set_owned after the acquisitions
        stats = a.statistics()
        assert (stats.owned, stats.wanted, stats.waiting) == (a.owned, a.owned, frozenset())
        assert stats.moves == len(a.owned)
        nursery.cancel_scope.cancel()


async def test_a_joining_silo_gets_its_partitions_only_after_they_drained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    directory, pullers = MemoryGrainDirectory(), Pullers()
    a, b = new_balancer("a", directory, pullers), new_balancer("b", directory, pullers)
    async with trio.open_nursery() as nursery:
        a.update(make_view(1, a=SiloStatus.ACTIVE))
        await nursery.start(a.run)
        await settle([a])
        assert a.owned == set(range(PARTITIONS))
        b.update(make_view(2, a=SiloStatus.ACTIVE, b=SiloStatus.JOINING))
        await nursery.start(b.run)
        await settle([a, b])
        assert b.owned == frozenset()  # joining: nothing yet
        assert pullers.calls["b"] == [frozenset()]  # the first pass syncs the provider
        view = make_view(3, a=SiloStatus.ACTIVE, b=SiloStatus.ACTIVE)
        moving = owned_partitions("b", ["a", "b"], PARTITIONS)
        assert moving
        b.update(view)  # b learns first: its partitions are still held by a
        await settle([a, b], 1.0)
        assert b.owned == frozenset()
        assert b.statistics().waiting == moving
        a.update(view)
        await settle([a, b], DRAIN + 5)
        assert b.owned == moving
        assert a.owned == set(range(PARTITIONS)) - moving
        assert all(pullers.pulling[p] == "b" for p in moving)
        assert b.statistics().waiting == frozenset()
        assert a.statistics().moves == PARTITIONS + len(moving)
        nursery.cancel_scope.cancel()


async def test_survivors_take_over_the_partitions_of_a_dead_silo(
    autojump_clock: trio.testing.MockClock,
) -> None:
    directory, pullers = MemoryGrainDirectory(), Pullers()
    balancers = {s: new_balancer(s, directory, pullers) for s in "abc"}
    view = make_view(1, a=SiloStatus.ACTIVE, b=SiloStatus.ACTIVE, c=SiloStatus.ACTIVE)
    async with trio.open_nursery() as nursery:
        scopes = {}
        for silo, balancer in balancers.items():
            balancer.update(view)
            scopes[silo] = trio.CancelScope()
            nursery.start_soon(run_in, scopes[silo], balancer)
        await settle(balancers.values())
        dead_share = balancers["c"].owned
        assert dead_share
        scopes["c"].cancel()  # c crashes: it neither drains nor releases its leases
        for p in dead_share:
            pullers.pulling.pop(p)
        dead = make_view(2, a=SiloStatus.ACTIVE, b=SiloStatus.ACTIVE, c=SiloStatus.DEAD)
        balancers["a"].update(dead)
        balancers["b"].update(dead)
        await settle([balancers["a"], balancers["b"]])
        a, b = balancers["a"].owned, balancers["b"].owned
        assert a == owned_partitions("a", ["a", "b"], PARTITIONS)
        assert a | b == set(range(PARTITIONS))
        assert "c" not in leases(directory).values()
        assert len(directory) == PARTITIONS
        nursery.cancel_scope.cancel()


async def run_in(scope: trio.CancelScope, balancer: PartitionBalancer) -> None:
    with scope:
        await balancer.run()


async def test_a_silo_that_is_not_active_owns_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    directory, pullers = MemoryGrainDirectory(), Pullers()
    a = new_balancer("a", directory, pullers)
    async with trio.open_nursery() as nursery:
        a.update(make_view(1, a=SiloStatus.JOINING))
        await nursery.start(a.run)
        await settle([a], 1)
        assert a.owned == frozenset()
        assert len(directory) == 0
        a.update(make_view(2, a=SiloStatus.ACTIVE))
        await settle([a], 1)
        assert a.owned == set(range(PARTITIONS))
        a.update(make_view(3, a=SiloStatus.SHUTTING_DOWN))
        await settle([a], DRAIN + 1)
        assert a.owned == frozenset()
        assert pullers.pulling == {}
        assert len(directory) == 0
        assert a.statistics().wanted == frozenset()
        a.update(make_view(4))  # gone from the view
        await settle([a], 1)
        assert a.owned == frozenset()
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class FlakyDirectory(GrainDirectory):
    """A MemoryGrainDirectory whose register and unregister fail while ``failing`` > 0."""

    inner: MemoryGrainDirectory = attrs.field(factory=MemoryGrainDirectory)
    failing: int = 0

    def _maybe_fail(self) -> None:
        if self.failing > 0:
            self.failing -= 1
            raise DirectoryError("the directory is down")

    async def register(self, entry: DirectoryEntry) -> DirectoryEntry:
        self._maybe_fail()
        return await self.inner.register(entry)

    async def lookup(self, grain_id: GrainId) -> DirectoryEntry | None:
        return await self.inner.lookup(grain_id)

    async def unregister(self, entry: DirectoryEntry) -> bool:
        self._maybe_fail()
        return await self.inner.unregister(entry)

    async def remove_silo(self, silo_id: str) -> int:
        return await self.inner.remove_silo(silo_id)

    async def remove_silos_not_in(self, live: Set[str]) -> int:
        return await self.inner.remove_silos_not_in(live)


async def test_directory_errors_do_not_stop_the_balancer(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    directory, pullers = FlakyDirectory(failing=5), Pullers()
    a = new_balancer("a", directory, pullers)
    with caplog.at_level(logging.WARNING, logger="trio_grains.ownership"):
        async with trio.open_nursery() as nursery:
            a.update(make_view(1, a=SiloStatus.ACTIVE))
            await nursery.start(a.run)
            await trio.sleep(0.1)
            # the first pass failed for some partitions, and pulls the others already
            assert a.statistics().waiting == set(range(5))
            assert a.owned == set(range(5, PARTITIONS))
            await settle([a], 5)
            assert a.owned == set(range(PARTITIONS))
            assert len(directory.inner) == PARTITIONS
            directory.failing = 3
            a.update(make_view(2, a=SiloStatus.SHUTTING_DOWN))
            await settle([a], DRAIN + 5)
            assert a.owned == frozenset()
            assert len(directory.inner) == 0
            nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert "the directory is down" in warnings[0].getMessage()


async def test_release_all_leaves_no_leases(autojump_clock: trio.testing.MockClock) -> None:
    directory, pullers = FlakyDirectory(), Pullers()
    a, b = new_balancer("a", directory, pullers), new_balancer("b", directory, pullers)
    view = make_view(1, a=SiloStatus.ACTIVE, b=SiloStatus.ACTIVE)
    async with trio.open_nursery() as nursery:
        for balancer in (a, b):
            balancer.update(view)
            await nursery.start(balancer.run)
        await settle([a, b])
        a_share = a.owned
        directory.failing = 1  # release_all retries
        await a.release_all()
        assert pullers.calls["a"][-1] == frozenset()
        assert a.owned == frozenset()
        assert "a" not in leases(directory.inner).values()
        assert not set(pullers.pulling) & a_share
        a.update(view)  # after release_all it wants nothing any more
        await settle([a, b], 1)
        assert a.owned == frozenset()
        await b.release_all()
        assert len(directory.inner) == 0
        nursery.cancel_scope.cancel()


async def test_a_leftover_lease_of_the_same_silo_is_reclaimed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    directory, pullers = MemoryGrainDirectory(), Pullers()
    stale = DirectoryEntry.new(partition_lease_id("events", 0), "a")
    await directory.register(stale)
    a = new_balancer("a", directory, pullers)
    async with trio.open_nursery() as nursery:
        a.update(make_view(1, a=SiloStatus.ACTIVE))
        await nursery.start(a.run)
        await settle([a], 1)
        assert a.owned == set(range(PARTITIONS))
        entry = await directory.lookup(partition_lease_id("events", 0))
        assert entry is not None
        assert not entry.same_activation(stale)
        nursery.cancel_scope.cancel()


def test_bad_arguments() -> None:
    pullers = Pullers()
    with pytest.raises(ValueError, match="partitions"):
        PartitionBalancer("events", 0, "a", MemoryGrainDirectory(), pullers.set_owned_for("a"))
    with pytest.raises(ValueError, match="retry_interval"):
        new_balancer("a", MemoryGrainDirectory(), pullers, retry_interval=0)


@pytest.mark.parametrize("partitions", [8, 16, 30])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 6])
def test_partitions_are_shared_out_no_silo_above_its_share_rounded_up(
    partitions: int, count: int
) -> None:
    for attempt in range(20):
        silos = [f"silo-{attempt}-{i}" for i in range(count)]
        shares = [owned_partitions(s, silos, partitions) for s in silos]
        assert sorted(p for share in shares for p in share) == list(range(partitions))
        assert max(len(share) for share in shares) <= -(-partitions // count)
