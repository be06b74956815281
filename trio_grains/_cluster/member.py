"""A silo's life as a cluster member: joining, owning its share, leaving.

:class:`ClusterMember` is what :func:`~trio_grains.open_silo` adds when the silo is
configured with a clustering provider: it opens the provider and the silo's transport
endpoint (:class:`~trio_grains._cluster.routing.SiloCluster` does the calls), keeps the silo's
membership row (:class:`~trio_grains._cluster.membership_service.MembershipService`), gives the
reminder service and each stream provider the share the membership view assigns this
silo, and on the way out leaves in order: ``SHUTTING_DOWN`` first (placement stops
choosing it), partitions released, then the row removed, then a moment of "not here"
answers for callers whose view lags.

May import: layers 0-8 (the core, reminders, streams, the rest of the cluster, the plugins).
The silo for type names only: ``_silo`` imports this module when it loads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from .._exceptions import MembershipError
from .._ids import GrainId
from .._registry import ProviderContext
from .membership_service import MembershipService
from .ownership import PartitionBalancer, owner_filter_for
from .routing import SiloCluster
from .silo_entries import SiloStatus

if TYPE_CHECKING:
    from .._calls import TimeoutWheel
    from .._metrics import SiloMetrics
    from .._reminders import ReminderService
    from .._serialization import Codec
    from .._silo import Silo
    from .._streams.provider import StreamProvider
    from .._tracing import Tracer

__all__ = ["ClusterMember", "warn_per_silo_providers"]

log = logging.getLogger("trio_grains.silo")


def _owns_nothing(_grain_id: GrainId) -> bool:
    return False


def warn_per_silo_providers(silo_id: str, memory_providers: Sequence[str]) -> None:
    """Log what per-silo in-memory providers lose in a cluster."""
    if memory_providers:
        log.warning(
            "silo %s joins a cluster with per-silo in-memory providers (%s): a grain that "
            "moves loses that state, reminders registered through another silo never "
            "fire, stream items published on another silo are never delivered. Use "
            "shared backends (sqlite on one machine, postgres, jetstream)",
            silo_id,
            ", ".join(memory_providers),
        )


class ClusterMember:
    """The cluster side of one silo's lifetime (see the module docstring)."""

    def __init__(self, silo: Silo) -> None:
        self.silo = silo
        self.cluster: SiloCluster | None = None
        self.membership: MembershipService | None = None
        self.balancers: list[PartitionBalancer] = []

    async def open(
        self,
        stack: contextlib.AsyncExitStack,
        *,
        codec: Codec,
        wheel: TimeoutWheel,
        tracer: Tracer | None,
        metrics: SiloMetrics | None,
    ) -> SiloCluster:
        """Open the clustering provider and this silo's transport endpoint."""
        silo, config = self.silo, self.silo.config
        assert config.clustering is not None
        factory = silo.plugins.clustering.get(config.clustering.provider)
        ctx = ProviderContext(
            name="default",
            silo_name=silo.name,
            cluster_id=config.cluster_id,
            converter=silo.converter,
            clustering=config.clustering,
        )
        backend = await stack.enter_async_context(factory(ctx, dict(config.clustering.options)))
        transport = await stack.enter_async_context(backend.open_endpoint(silo.silo_id))
        peer = None
        if config.grain_directory == "in-cluster":
            peer = await stack.enter_async_context(backend.open_peer_endpoint(silo.silo_id))
        placement = silo.plugins.placement
        self.cluster = SiloCluster(
            backend,
            transport,
            silo.silo_id,
            placement,
            placement.strategy_for_name(config.default_placement),
            config=config,
            registry=silo.registry,
            codec=codec,
            wheel=wheel,
            tracer=tracer,
            metrics=metrics,
            peer_transport=peer,
        )
        return self.cluster

    def own_reminders(self, service: ReminderService) -> None:
        """Fire only the reminders the membership view gives this silo (none before it)."""
        assert self.cluster is not None
        silo_id = self.silo.silo_id
        service.set_owner_filter(_owns_nothing)
        self.cluster.view_listeners.append(
            lambda view: service.set_owner_filter(owner_filter_for(silo_id, view))
        )

    async def balance(self, provider: StreamProvider, nursery: trio.Nursery) -> None:
        """Pull only the partitions of *provider* that the membership view gives this silo."""
        assert self.cluster is not None
        locator = self.cluster.locator
        balancer = PartitionBalancer(
            provider_name=provider.name,
            partitions=provider.partitions,
            silo_id=self.silo.silo_id,
            directory=self.cluster.backend_directory,
            set_owned=provider.set_owned_partitions,
            alive=locator.alive,
            takeover_delay=provider.adapter.takeover_delay,
        )
        await nursery.start(balancer.run)
        self.cluster.view_listeners.append(balancer.update)
        self.balancers.append(balancer)

    def join(self) -> MembershipService:
        """The membership service to enter: it joins, heartbeats, watches, and leaves."""
        assert self.cluster is not None
        config = self.silo.config
        self.membership = MembershipService(
            self.cluster.locator.membership,
            self.cluster.entry(),
            heartbeat_interval=config.heartbeat_interval,
            dead_after=config.dead_after,
            load=self.cluster.local_load,
            leave_when_cancelled=True,  # a cancelled silo still deactivates and leaves
        )
        return self.membership

    async def start_leaving(self) -> None:
        """Tell the cluster this silo is going, and release its stream partitions."""
        membership, silo = self.membership, self.silo
        if membership is None:
            return
        if membership.declared_dead.is_set():
            silo.mark_crashed()  # its grains may be active elsewhere already
            return
        if silo.crashed:
            membership.leave_when_cancelled = False  # killed: say no goodbye
            return
        with trio.move_on_after(self.silo.config.dead_after):
            try:
                await membership.set_status(SiloStatus.SHUTTING_DOWN)
            except MembershipError:
                pass
        for balancer in self.balancers:  # drain, then free the leases
            await balancer.release_all()

    async def linger(self) -> None:
        """After leaving: answer "not here" for a moment to callers whose view still
        shows this silo, rather than let them wait on a closed endpoint."""
        membership = self.membership
        if (
            membership is not None
            and not membership.declared_dead.is_set()
            and not self.silo.crashed
            and any(e.silo_id != self.silo.silo_id for e in membership.view.active())
        ):
            with trio.CancelScope(shield=True):
                await trio.sleep(min(1.0, self.silo.config.heartbeat_interval))
