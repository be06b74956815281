"""The in-cluster grain directory: its ring, its partitions, its messages, and single
activation while silos join, leave and die during an activation storm."""

from __future__ import annotations

import random
from collections import Counter

import cattrs
import msgpack
import pytest
import trio

from trio_grains import Grain, GrainId, RandomPlacement, SiloConfig, placement
from trio_grains._cluster import envelope as env
from trio_grains._cluster.directory import DirectoryEntry
from trio_grains._cluster.directory_ring import DirectoryPartition, DirectoryRing
from trio_grains._cluster.distributed_directory import DIRECTORY_TARGET
from trio_grains.testing import open_test_cluster


def gid(i: int) -> GrainId:
    return GrainId.create("thing", f"k{i}")


GRAINS = [gid(i) for i in range(3000)]

# --- the ring -------------------------------------------------------------------------------


def test_equal_owner_sets_give_one_ring_and_a_new_owner_takes_only_its_share() -> None:
    one = DirectoryRing.for_owners(["a", "b", "c"])
    again = DirectoryRing.for_owners(["c", "a", "b"], members=["a", "b", "c", "d"])
    assert one.key == again.key
    assert all(one.owner_of(g) == again.owner_of(g) for g in GRAINS)
    shares = Counter(one.owner_of(g) for g in GRAINS)
    assert set(shares) == {"a", "b", "c"}
    assert min(shares.values()) > len(GRAINS) / 3 * 0.5  # roughly even

    grown = DirectoryRing.for_owners(["a", "b", "c", "d"])
    assert grown.key != one.key
    moved = [g for g in GRAINS if one.owner_of(g) != grown.owner_of(g)]
    assert all(grown.owner_of(g) == "d" for g in moved)  # only to the newcomer
    assert 0.1 * len(GRAINS) < len(moved) < 0.45 * len(GRAINS)


def test_a_ring_without_owners_owns_nothing() -> None:
    empty = DirectoryRing.for_owners([])
    assert empty.owner_of(gid(1)) is None
    assert empty.key == 0


# --- a partition ----------------------------------------------------------------------------


def entry(i: int, silo: str, activation: str = "x") -> DirectoryEntry:
    return DirectoryEntry(gid(i), silo, f"{activation}{i}")


def owned_by(ring: DirectoryRing, silo: str, count: int) -> list[int]:
    return [i for i in range(len(GRAINS)) if ring.owner_of(gid(i)) == silo][:count]


def test_a_partition_serves_once_every_member_pushed_and_keeps_the_first_activation() -> None:
    ring = DirectoryRing.for_owners(["a", "b"], members=["a", "b", "c"])
    part = DirectoryPartition("a")
    mine = owned_by(ring, "a", 3)
    part.adopt(ring, [entry(mine[0], "a")], view_version=10)
    assert not part.recovered
    assert part.statistics().waiting_for == {"b", "c"}
    assert part.pushed(ring.key, "b", [entry(mine[1], "b")], False, 11) == []
    assert part.pushed(ring.key, "b", [], True, 11) == []
    assert not part.recovered
    # c holds another activation of a grain b registered: refused, counted
    refused = part.pushed(ring.key, "c", [entry(mine[1], "c", "y")], True, 12)
    assert refused == [entry(mine[1], "c", "y")]
    assert part.recovered
    assert part.conflicts == 1
    assert part.lookup(gid(mine[0])) is not None
    held = part.lookup(gid(mine[1]))
    assert held is not None
    assert held.silo_id == "b"
    # create-if-absent
    winner = part.register(entry(mine[1], "a", "z"))
    assert winner.silo_id == "b"
    new = part.register(entry(mine[2], "a"))
    assert new.silo_id == "a"
    assert new.revision is not None
    assert not part.unregister(entry(mine[2], "a", "other"))  # not that activation
    assert part.unregister(entry(mine[2], "a"))
    assert part.lookup(gid(mine[2])) is None


def test_pushes_for_a_ring_not_adopted_yet_are_kept_and_old_ones_dropped() -> None:
    first = DirectoryRing.for_owners(["a", "b"], members=["a", "b"])
    second = DirectoryRing.for_owners(["a"], members=["a", "c"])
    part = DirectoryPartition("a")
    part.adopt(first, [], view_version=5)
    early = owned_by(second, "a", 1)[0]
    part.pushed(second.key, "c", [entry(early, "c")], True, 9)  # c is ahead of us
    part.pushed(first.key, "b", [], True, 6)
    assert part.recovered
    part.adopt(second, [], view_version=9)
    assert part.recovered  # c's early push counted
    found = part.lookup(gid(early))
    assert found is not None
    assert found.silo_id == "c"
    # The first ring comes back (A, B, A): a push made for its first time is stale.
    part.adopt(first, [], view_version=20)
    stale = next(i for i in owned_by(first, "a", 5) if i != early)
    assert part.pushed(first.key, "b", [entry(stale, "b")], True, 6) == []
    assert not part.recovered
    assert part.lookup(gid(stale)) is None
    part.pushed(first.key, "b", [], True, 21)
    assert part.recovered


def test_a_dead_member_owes_no_push_and_its_entries_go() -> None:
    ring = DirectoryRing.for_owners(["a"], members=["a", "b"])
    part = DirectoryPartition("a")
    part.adopt(ring, [], view_version=1)
    part.pushed(ring.key, "b", [entry(i, "b") for i in range(5)], False, 1)
    assert not part.recovered
    assert part.remove_silos({"b"}) == 5
    assert part.recovered
    assert not part.entries


# --- in a cluster -----------------------------------------------------------------------------

LIVE: dict[str, str] = {}  # grain -> silo of its live activation
DOUBLE: list[str] = []
ACTIVATED: Counter[str] = Counter()


class StormGrain(Grain):
    async def on_activate(self) -> None:
        gid = str(self.grain_id)
        if gid in LIVE:
            DOUBLE.append(f"{gid} on {self.runtime_identity} and {LIVE[gid]}")
        LIVE[gid] = self.runtime_identity
        ACTIVATED[gid] += 1

    async def on_deactivate(self, reason: str) -> None:
        if LIVE.get(str(self.grain_id)) == self.runtime_identity:
            del LIVE[str(self.grain_id)]

    async def hit(self) -> str:
        await trio.sleep(0.01)
        return self.runtime_identity


@pytest.fixture(autouse=True)
def _reset() -> None:
    LIVE.clear()
    DOUBLE.clear()
    ACTIVATED.clear()


async def test_a_lone_silo_registers_without_sending_a_message() -> None:
    async with open_test_cluster(1, grains=[StormGrain]) as cluster:
        silo = cluster.silos[0]
        for i in range(50):
            await silo.get_grain(StormGrain, i).hit()
        assert silo.cluster is not None
        assert silo.cluster.distributed is not None
        assert silo.cluster.distributed.messenger.sent == 0
        assert cluster.directory_size() == 50


async def test_with_the_provider_directory_entries_go_to_the_backend() -> None:
    async with open_test_cluster(
        2, grains=[StormGrain], config=SiloConfig(grain_directory="provider")
    ) as cluster:
        await cluster.get_grain(StormGrain, "p").hit()
        assert all(s.cluster is not None and s.cluster.distributed is None for s in cluster.silos)
        assert cluster.memory is not None
        assert len(cluster.memory.directory) == 1


def test_an_unknown_directory_kind_is_a_config_error() -> None:
    from trio_grains import ConfigError

    with pytest.raises(ConfigError, match="grain_directory must be one of"):
        SiloConfig(grain_directory="redis")


async def test_silos_join_leave_and_die_during_an_activation_storm_one_activation_each(
    autojump_clock: trio.abc.Clock,
) -> None:
    rng = random.Random(7)
    async with open_test_cluster(3, grains=[StormGrain]) as cluster:
        stop = trio.Event()
        answered = 0

        async def storm(worker: int) -> None:
            nonlocal answered
            while not stop.is_set():
                ref = cluster.get_grain(StormGrain, f"g{rng.randrange(300)}")
                try:
                    await ref.hit()
                    answered += 1
                except Exception:  # a call in flight to a silo that died
                    pass

        async def forget_killed(silo_id: str) -> None:
            for grain, where in list(LIVE.items()):
                if where == silo_id:
                    del LIVE[grain]

        async with trio.open_nursery() as nursery:
            for w in range(20):
                nursery.start_soon(storm, w)
            await trio.sleep(2)
            await cluster.start_silo()
            await trio.sleep(2)
            await cluster.stop_silo(cluster.silos[0])  # leaves gracefully
            await trio.sleep(2)
            victim = cluster.silos[0]
            await cluster.kill_silo(victim)
            await forget_killed(victim.silo_id)
            await cluster.start_silo()
            await trio.sleep(12)  # past dead_after: the survivors take the victim's share
            await cluster.start_silo()
            await trio.sleep(3)
            stop.set()
        assert not DOUBLE
        assert answered > 1000
        assert len(ACTIVATED) == 300
        # every grain answers, and the directory agrees with the silos
        for i in range(0, 300, 7):
            where = await cluster.get_grain(StormGrain, f"g{i}").hit()
            found = await cluster.lookup_activation(GrainId.create("storm", f"g{i}"))
            assert found is not None
            assert found.silo_id == where


# --- hostile requests at a peer endpoint ------------------------------------------------------


async def test_bad_directory_requests_are_answered_with_errors_and_change_nothing() -> None:
    async with open_test_cluster(1, grains=[StormGrain]) as cluster:
        silo = cluster.silos[0]
        assert cluster.memory is not None
        assert silo.cluster is not None
        distributed = silo.cluster.distributed
        assert distributed is not None
        peer = distributed.messenger.transport.address
        ring = distributed.ring.key
        async with cluster.memory.open_endpoint("attacker") as hostile:
            limits = env.Limits(hostile.is_endpoint_address)

            async def ask(method: str, args: object, target: str = str(DIRECTORY_TARGET)) -> int:
                call_id = random.getrandbits(63) + 1
                payload = msgpack.packb(args)
                await hostile.send(
                    peer,
                    env.encode_request(
                        call_id, hostile.address, target, method, payload, 5.0, 0, 0, None
                    ),
                )
                with trio.fail_after(5):
                    reply = env.decode(await hostile.receive(), limits)
                assert isinstance(reply, env.Reply)
                assert reply.call_id == call_id
                return reply.status

            good = {"grain": "storm/x", "silo": silo.silo_id, "activation": "a1"}
            # a grain call at a peer endpoint; an unknown operation
            assert await ask("hit", {}, target="storm/x") == env.ERROR
            assert await ask("drop_all", {"ring": ring, "version": 0}) == env.ERROR
            # wrong types (no coercion), a malformed grain id, an oversized activation id
            assert (
                await ask("register", {"ring": str(ring), "version": 0, "entries": [good]})
                == env.ERROR
            )
            bad_grain = {**good, "grain": "no slash here"}
            assert (
                await ask("register", {"ring": ring, "version": 0, "entries": [bad_grain]})
                == env.ERROR
            )
            long_id = {**good, "activation": "a" * 1000}
            assert (
                await ask("register", {"ring": ring, "version": 0, "entries": [long_id]})
                == env.ERROR
            )
            # a push naming another silo's activations
            push = {
                "ring": ring,
                "version": 0,
                "sender": "attacker",
                "entries": [good],
                "done": True,
            }
            assert await ask("push", push) == env.ERROR
            assert cluster.directory_size() == 0
            # the silo still works
            assert await silo.get_grain(StormGrain, "after").hit() == silo.silo_id


# --- placement that follows the data ------------------------------------------------------------


@placement(RandomPlacement())
class SpreadGrain(StormGrain):
    pass


async def test_grains_first_called_by_a_delivery_are_activated_where_it_runs() -> None:
    async with open_test_cluster(2, grains=[StormGrain, SpreadGrain]) as cluster:
        here = cluster.silos[1]
        for i in range(30):
            # what a stream agent or a reminder tick does
            where = await here.dispatcher.invoke_by_id(GrainId.create("storm", f"d{i}"), "hit", ())
            assert where == here.silo_id
        # a class that chose its placement keeps it
        spread = {
            await here.dispatcher.invoke_by_id(GrainId.create("spread", f"s{i}"), "hit", ())
            for i in range(30)
        }
        assert spread == {s.silo_id for s in cluster.silos}
        # a grain already active elsewhere is called there, not activated twice
        other = cluster.silos[0]
        for i in range(100):  # (random placement: find a key it put on the other silo)
            if await other.get_grain(StormGrain, f"e{i}").hit() == other.silo_id:
                break
        gid = GrainId.create("storm", f"e{i}")
        assert await here.dispatcher.invoke_by_id(gid, "hit", ()) == other.silo_id
        assert not DOUBLE


async def test_concurrent_registrations_and_unregistrations_to_one_owner_share_messages() -> None:
    async with open_test_cluster(2, grains=[StormGrain]) as cluster:
        here, other = cluster.silos[1], cluster.silos[0]
        assert here.cluster is not None
        distributed = here.cluster.distributed
        assert distributed is not None
        ring = distributed.ring
        keys = [f"b{i}" for i in range(200)]
        remote = [k for k in keys if ring.owner_of(GrainId.create("storm", k)) == other.silo_id]
        assert len(remote) > 50
        sent = distributed.messenger.sent
        async with trio.open_nursery() as nursery:
            for key in keys:  # 200 activations here at once (placed here: deliveries)
                gid = GrainId.create("storm", key)
                nursery.start_soon(here.dispatcher.invoke_by_id, gid, "hit", ())
        registered = distributed.messenger.sent - sent
        assert 1 <= registered <= 3  # one batch per owner (and tick), not one per grain
        assert cluster.directory_size() == 200
        sent = distributed.messenger.sent
        for key in keys:
            act = here.catalog.lookup(GrainId.create("storm", key))
            assert act is not None
            here.catalog.deactivate_soon(act, "test")
        with trio.fail_after(10):
            while cluster.directory_size():  # noqa: ASYNC110 - polling a count
                await trio.sleep(0.01)
        assert 1 <= distributed.messenger.sent - sent <= 3


async def test_a_push_that_failed_is_sent_again_while_heartbeats_renew_the_view(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_cluster(1, grains=[StormGrain]) as cluster:
        assert cluster.memory is not None
        first = cluster.silos[0]
        assert first.cluster is not None
        assert first.cluster.distributed is not None
        peer = first.cluster.distributed.messenger.transport.address
        cluster.memory.cut_off.add(peer)  # pushes to the first silo are lost for a while
        second = await cluster.start_silo()
        await cluster.wait_for_active(2)
        await trio.sleep(12)  # many heartbeats (views with the same ring) meanwhile
        cluster.memory.cut_off.discard(peer)
        with trio.fail_after(30):
            while not all(  # noqa: ASYNC110 - polling the shares' state
                s.cluster is not None
                and s.cluster.distributed is not None
                and s.cluster.distributed.partition.recovered
                for s in (first, second)
            ):
                await trio.sleep(0.1)
        for i in range(20):
            await first.get_grain(StormGrain, f"after{i}").hit()
        assert not DOUBLE


async def test_a_silo_of_another_directory_kind_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_test_cluster(1, grains=[StormGrain]) as cluster:
        await cluster.start_silo(grain_directory="provider")
        with trio.fail_after(10):
            while "the same grain_directory" not in caplog.text:  # noqa: ASYNC110
                await trio.sleep(0.05)
        errors = [r for r in caplog.records if "the same grain_directory" in r.getMessage()]
        assert errors[0].levelname == "ERROR"


async def test_a_client_calls_the_silo_that_answered_directly_afterwards() -> None:
    async with open_test_cluster(3, grains=[StormGrain]) as cluster:

        def forwarded() -> int:
            return sum(s.statistics().calls_forwarded for s in cluster.silos)

        where = {await cluster.get_grain(StormGrain, f"c{i}").hit() for i in range(30)}
        assert len(where) > 1  # placed on several silos, some through a forward
        before = forwarded()
        for _ in range(3):
            for i in range(30):
                await cluster.get_grain(StormGrain, f"c{i}").hit()
        assert forwarded() == before  # every later call went straight to its silo


def test_a_view_with_the_same_owners_reuses_the_ring_points() -> None:
    from trio_grains._cluster.silo_entries import MembershipView, SiloEntry, SiloStatus

    def view(version: int, *extra: SiloEntry) -> MembershipView:
        owners = [SiloEntry(s, f"addr.{s}", SiloStatus.ACTIVE) for s in ("a", "b")]
        return MembershipView({e.silo_id: e for e in (*owners, *extra)}, version)

    first = DirectoryRing.of(view(1))
    joining = SiloEntry("c", "addr.c", SiloStatus.JOINING)
    second = DirectoryRing.of(view(2, joining), first)
    assert second.key == first.key
    assert second.members == {"a", "b", "c"}
    assert all(second.owner_of(g) == first.owner_of(g) for g in GRAINS[:200])
    assert second._points is first._points  # not made again


async def test_a_registration_before_the_directory_serves_is_sent_alone() -> None:
    from trio_grains._cluster.distributed_directory import (
        OK,
        DirectoryAnswer,
        DistributedGrainDirectory,
        WireEntry,
    )
    from trio_grains._serialization import Codec

    sent: list[list[WireEntry]] = []

    class Owner:  # the messenger, as the other silo answers through it
        async def call(
            self, silo: str, target: GrainId, op: object, args: object, kwargs: dict
        ) -> object:  # type: ignore[type-arg]
            sent.append(kwargs["entries"])
            return DirectoryAnswer(OK, kwargs["ring"], entries=kwargs["entries"])

    directory = DistributedGrainDirectory(
        "a",
        Owner(),  # type: ignore[arg-type]
        Codec(cattrs.Converter()),
        local_entries=list,
        refresh=trio.lowlevel.checkpoint,
        refused=lambda _entry: None,
        max_grain_id_length=2048,
    )
    ring = DirectoryRing.for_owners(["a", "b"])
    directory.ring = ring  # (not running: no view, no nursery)
    i = next(i for i in range(len(GRAINS)) if ring.owner_of(gid(i)) == "b")
    stored = await directory.register(entry(i, "a"))
    assert stored.same_activation(entry(i, "a"))
    assert sent == [[WireEntry.of(entry(i, "a"))]]
