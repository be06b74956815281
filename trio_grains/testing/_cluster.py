"""An in-process test cluster: several silos and a client in one Trio run.

Like Orleans' ``InProcessTestCluster``::

    async with open_test_cluster(3, grains=[CartGrain]) as cluster:
        cart = cluster.client.get_grain(CartGrain, "bob65")
        await cart.add("socks")
        await cluster.kill_silo(cluster.silos[0])   # as kill -9 would
        await cluster.start_silo()                  # a fresh member

By default the silos share a :class:`~trio_grains.MemoryCluster` (membership, directory
and transport in memory); pass
``clustering=ProviderConfig(provider="nats", options={...})`` to run the same silos over a
real NATS server. Time-based behaviour (heartbeats, failure detection)
follows Trio's clock, so a ``MockClock`` with autojump makes it instant.

May import: every layer below (the silo, the client, the cluster) and the ``trio_grains``
package. Not ``cli`` or the conformance kits.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from .._client import Client, ClientConfig, open_client
from .._cluster.directory import DirectoryEntry
from .._cluster.transport import MemoryCluster
from .._config import ProviderConfig, SiloConfig
from .._exceptions import SiloDeclaredDeadError
from .._grain import GrainInterface
from .._ids import GrainId, GrainKey
from .._silo import Silo, open_silo

__all__ = ["TestCluster", "open_test_cluster"]

G = TypeVar("G", bound=GrainInterface)


@attrs.define(eq=False)
class _Member:
    silo: Silo
    stop: trio.Event
    done: trio.Event
    scope: trio.CancelScope


@attrs.define(eq=False)
class TestCluster:
    """Silos and a client of one test cluster; see :func:`open_test_cluster`."""

    __test__ = False  # not a pytest test class

    config: SiloConfig
    grains: tuple[type, ...]
    plugins: tuple[object, ...]
    wall_clock: Callable[[], float] | None
    memory: MemoryCluster | None
    _nursery: trio.Nursery
    _members: dict[str, _Member] = attrs.field(factory=dict, init=False)
    _started: int = attrs.field(default=0, init=False)
    _client: Client | None = attrs.field(default=None, init=False)
    #: silo id -> why it stopped on its own (e.g. it was declared dead)
    stopped: dict[str, BaseException] = attrs.field(factory=dict, init=False)

    @property
    def silos(self) -> list[Silo]:
        """The running silos, oldest first."""
        return [m.silo for m in self._members.values()]

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("the test cluster has no client (open_test_cluster(client=True))")
        return self._client

    def get_grain(self, grain_class: type[G], key: GrainKey, *, key_ext: str | None = None) -> G:
        """A reference through the cluster's client."""
        return self.client.get_grain(grain_class, key, key_ext=key_ext)

    async def start_silo(self, **changes: Any) -> Silo:
        """Start one more silo (``changes`` override fields of its ``SiloConfig``)."""
        index = self._started
        self._started += 1
        config = attrs.evolve(self.config, **{"name": f"silo-{index}", **changes})
        member: _Member = await self._nursery.start(self._run_silo, config)
        self._members[member.silo.silo_id] = member
        return member.silo

    async def _run_silo(self, config: SiloConfig, *, task_status: Any) -> None:
        stop, done = trio.Event(), trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with open_silo(
                    config, grains=self.grains, plugins=self.plugins, wall_clock=self.wall_clock
                ) as silo:
                    task_status.started(_Member(silo, stop, done, scope))
                    await stop.wait()
        except SiloDeclaredDeadError as exc:
            self.stopped[silo.silo_id] = exc
        finally:
            done.set()
            self._members = {k: m for k, m in self._members.items() if m.done is not done}

    async def stop_silo(self, silo: Silo) -> None:
        """Stop *silo* gracefully: it deactivates its grains and leaves the cluster."""
        member = self._member(silo)
        member.stop.set()
        await member.done.wait()

    async def kill_silo(self, silo: Silo) -> None:
        """Stop *silo* as ``kill -9`` would: no deactivation, no goodbye. The others
        declare it dead after ``dead_after`` seconds."""
        member = self._member(silo)
        silo.mark_crashed()
        if self.memory is not None and silo.cluster is not None:
            # A killed process sends nothing more: not even the failures of the calls it
            # had queued, which its shutdown below would otherwise still reply with.
            self.memory.cut_off.add(silo.cluster.messenger.transport.address)
            if silo.cluster.distributed is not None:
                self.memory.cut_off.add(silo.cluster.distributed.messenger.transport.address)
        member.scope.cancel()
        await member.done.wait()

    async def lookup_activation(self, grain_id: GrainId) -> DirectoryEntry | None:
        """Where the grain directory says *grain_id* is active (asked through the first
        silo, past its cache), ``None`` if it is not."""
        cluster = self.silos[0].cluster
        assert cluster is not None
        return await cluster.locator.directory.lookup(grain_id, cached=False)

    def directory_size(self) -> int:
        """How many grains the in-cluster directory holds, summed over the silos' shares
        (with ``grain_directory = "provider"``: of a :class:`MemoryCluster`'s directory)."""
        shares = [
            len(s.cluster.distributed.partition.entries)
            for s in self.silos
            if s.cluster is not None and s.cluster.distributed is not None
        ]
        if shares:
            return sum(shares)
        return 0 if self.memory is None else len(self.memory.directory)

    async def wait_for_active(self, count: int) -> None:
        """Wait until every silo and the client see exactly *count* active silos."""
        while True:
            views = [v for s in self.silos if (v := s.membership_view) is not None]
            if self._client is not None:
                views.append(self._client.membership_view)
            if all(len(v.active()) == count for v in views):
                return
            await trio.sleep(0.01)

    def _member(self, silo: Silo) -> _Member:
        try:
            return self._members[silo.silo_id]
        except KeyError:
            raise ValueError(f"{silo!r} is not running in this test cluster") from None


@contextlib.asynccontextmanager
async def open_test_cluster(
    silos: int = 2,
    *,
    grains: Iterable[type] = (),
    config: SiloConfig | None = None,
    clustering: ProviderConfig | None = None,
    client: bool = True,
    plugins: Sequence[object] = (),
    wall_clock: Callable[[], float] | None = None,
) -> AsyncIterator[TestCluster]:
    """Run *silos* silos (and a client) of one cluster for the ``async with`` block.

    *config* is the template for every silo (each gets the name ``silo-<n>``; the default
    template has ``remote_tracebacks`` on, so a failing remote grain shows where);
    *clustering* the clustering provider (default: a fresh in-memory cluster). The block
    starts once every silo and the client see all silos active; leaving it stops the
    client and then the silos gracefully.
    """
    memory: MemoryCluster | None = None
    if clustering is None:
        memory = MemoryCluster()
        clustering = ProviderConfig(provider="memory", options={"cluster": memory})
    # Tests want to see where a remote grain failed: tracebacks travel (off by default).
    base = attrs.evolve(config or SiloConfig(remote_tracebacks=True), clustering=clustering)
    async with trio.open_nursery() as nursery:
        cluster = TestCluster(base, tuple(grains), tuple(plugins), wall_clock, memory, nursery)
        try:
            for _ in range(silos):
                await cluster.start_silo()
            if client:
                client_config = ClientConfig(
                    cluster_id=base.cluster_id,
                    clustering=clustering,
                    response_timeout=base.response_timeout,
                    plugins=base.plugins,
                    tracing=base.tracing,
                )
                async with open_client(client_config, plugins=plugins) as the_client:
                    cluster._client = the_client
                    await cluster.wait_for_active(silos)
                    yield cluster
                    cluster._client = None
            else:
                await cluster.wait_for_active(silos)
                yield cluster
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as stopping:
                    for silo in reversed(cluster.silos):
                        stopping.start_soon(cluster.stop_silo, silo)
