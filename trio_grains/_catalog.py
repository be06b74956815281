"""The silo's activations: the table, creating and finding them, idle collection, shutdown.

:class:`Catalog` owns every activation of a silo and is the :class:`ActivationHost` they
run in. The call path from a reference to a turn is the dispatcher's (``_dispatch.py``);
the turn rule is the activation's (``Activation.try_begin_turn``). A catalog is built by
the silo's composition root with every service it hands to activations; in a cluster it is
given the cluster's :class:`ClusterHooks` (directory registration, rerouting).

May import: values, grains, calls, activations, storage, tracing, metrics. Not the cluster,
streams, reminders, the dispatcher or the silo.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ._activation import ACTIVE, DEAD, Activation
from ._calls import Call, TimeoutWheel
from ._exceptions import GrainMethodError, GrainTypeError, SiloUnavailableError
from ._grain import GrainClassInfo, GrainClassRegistry, GrainServices, runtime_called
from ._ids import GrainId
from ._methods import NEVER_STOLEN, MethodInfo
from ._metrics import SiloMetrics
from ._tracing import Tracer, traced_methods

if TYPE_CHECKING:
    from ._config import SiloConfig
    from ._serialization import Codec
    from ._storage import GrainStorage

__all__ = ["Catalog", "ClusterHooks", "LocalCall"]

log = logging.getLogger("trio_grains.catalog")

#: ``local(grain_id, method, args, kwargs)``: call *method* on the activation here
LocalCall = Callable[[GrainId, MethodInfo, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


class ClusterHooks(Protocol):
    """What the catalog asks of the cluster layer (``_cluster.routing.SiloCluster``)."""

    async def register(self, act: Activation) -> None:
        """Register *act* in the grain directory, or raise ``ActivationRaceLostError``."""

    async def unregister(self, act: Activation) -> None:
        """Remove *act*'s directory entry (after ``on_deactivate``)."""

    def reroute(self, call: Call, local: LocalCall) -> None:
        """Send a call that never ran here to wherever its grain is now (through *local*
        if that is this silo)."""


class Catalog:
    """The activations of one silo by grain id, and the host they run in."""

    def __init__(
        self,
        config: SiloConfig,
        registry: GrainClassRegistry,
        codec: Codec,
        wheel: TimeoutWheel,
        services: GrainServices,
        *,
        silo_id: str,
        tracer: Tracer | None = None,
        metrics: SiloMetrics | None = None,
        storages: Mapping[str, tuple[GrainStorage, str]] | None = None,
        cluster: ClusterHooks | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.codec = codec
        self.wheel = wheel
        self.services = services
        self.silo_id = silo_id
        self.tracer = tracer
        self.metrics = metrics
        #: storage name -> (opened provider, provider name)
        self.storages: Mapping[str, tuple[GrainStorage, str]] = storages or {}
        self.isolate = config.isolate_local_calls
        self.max_queued_calls = config.max_queued_calls
        self.deactivation_timeout = config.deactivation_timeout
        self._cluster = cluster
        self.accepting = False
        self._nursery: trio.Nursery | None = None
        self._activations: dict[GrainId, Activation] = {}
        self._workers: dict[GrainId, list[Activation]] = {}
        self.activations_created = 0
        self._tables: dict[type, dict[str, MethodInfo]] = {}
        self._remote_tables: dict[type, dict[str, MethodInfo]] = {}
        self._abandoned = False  # abandon_shutdown() cut the shutdown short
        self._shutdown_scope: trio.CancelScope | None = None

    def method_table(self, info: GrainClassInfo) -> dict[str, MethodInfo]:
        """The methods activations of *info* run: the class's own, or with tracing or
        metrics on, wrapped, and with ``isolate_local_calls`` never stolen (built once per
        class per silo)."""
        if self.tracer is None and self.metrics is None and not self.isolate:
            return info.methods
        table = self._tables.get(info.cls)
        if table is None:
            grain_type = str(info.grain_type)
            table = info.methods
            if self.tracer is not None:
                table = traced_methods(table, self.tracer, grain_type)
            if self.metrics is not None:  # outermost: its timings include the spans
                table = self.metrics.instrument_methods(grain_type, table)
            if self.isolate:  # every call goes through the mailbox, copied as on a wire
                table = {n: attrs.evolve(m, steal_kind=NEVER_STOLEN) for n, m in table.items()}
            self._tables[info.cls] = table
        return table

    def remote_methods(self, info: GrainClassInfo) -> dict[str, MethodInfo]:
        """The methods of *info* that other processes may call: those its grain interfaces
        declare (all of them if it implements none), and those the runtime calls on it from
        any silo (``receive_reminder``, implicit stream subscriptions' handlers)."""
        table = self._remote_tables.get(info.cls)
        if table is None:
            table = self.method_table(info)
            if info.declared is not None:
                allowed = info.declared | runtime_called(info.cls)
                table = {name: m for name, m in table.items() if name in allowed}
            self._remote_tables[info.cls] = table
        return table

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise SiloUnavailableError("the silo is not running: use 'async with open_silo()'")
        return self._nursery

    # -- the cluster hooks (no-ops in a lone silo) ------------------------------------------

    async def register(self, act: Activation) -> None:
        if self._cluster is not None:
            await self._cluster.register(act)

    async def unregister(self, act: Activation) -> None:
        if self._cluster is not None:
            await self._cluster.unregister(act)

    def local_method(self, grain_id: GrainId, method: MethodInfo) -> tuple[Activation, MethodInfo]:
        """The activation of *grain_id* here (created if need be) and its own table's entry
        for *method*: what a call that placement sent to this silo runs."""
        info = self.implementation(grain_id, None)
        act = self.local_activation(grain_id, info)
        local = act.methods.get(method.name)
        if local is None:
            raise GrainMethodError(f"{info.describe()} has no grain method {method.name!r}")
        return act, local

    async def call_here(
        self, grain_id: GrainId, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call *method* on the activation of *grain_id* here, created if need be (a call
        rerouted here: its arguments were copied when it was first made)."""
        if not self.accepting:
            raise SiloUnavailableError(f"the silo is shutting down: cannot call {grain_id}")
        act, local = self.local_method(grain_id, method)
        return await act.call(local, args, kwargs)

    # -- activations --------------------------------------------------------------------------

    def implementation(self, grain_id: GrainId, iface: type | None) -> GrainClassInfo:
        """The grain class this silo hosts for *grain_id*'s type; :class:`GrainTypeError`
        naming the fix if there is none (*iface*: the interface called, for the hint)."""
        info = self.registry.get(grain_id.type)
        if info is not None:
            return info
        hint = ""
        if iface is not None:
            impls = [
                f"{i.cls.__qualname__} ('{i.grain_type}')"
                for t in self.registry.types()
                if (i := self.registry.get(t)) is not None and issubclass(i.cls, iface)
            ]
            if impls:
                hint = (
                    f"; this silo has implementations of {iface.__qualname__} with other type "
                    f"names: {', '.join(impls)}: give the interface and the class the same "
                    "@grain_type"
                )
        raise GrainTypeError(
            f"this silo hosts no grain class for grain type '{grain_id.type}' (called as "
            f"{grain_id}){hint}; register the class: open_silo(grains=[...]) or "
            "SiloConfig(grains=['module:Class'])"
        )

    def lookup(self, grain_id: GrainId) -> Activation | None:
        """The live (not dead) activation of *grain_id* here, if there is one."""
        act = self._activations.get(grain_id)
        if act is not None and act.state != DEAD:
            return act
        return None

    def count(self) -> int:
        """How many activations this silo holds (stateless workers' pools not counted)."""
        return len(self._activations)

    def find(self, grain_id: GrainId, iface: type | None) -> Activation | None:
        """The local activation to call *grain_id* on, created if this silo may place it;
        ``None`` in a cluster when the grain is not here."""
        act = self._activations.get(grain_id)
        if act is not None and act.state != DEAD:
            return act
        if self._cluster is not None:
            info = self.registry.get(grain_id.type)
            if info is not None and info.max_local_workers is not None:
                return self._pick_worker(grain_id, info)  # stateless workers stay local
            return None
        info = self.implementation(grain_id, iface)
        if info.max_local_workers is not None:
            return self._pick_worker(grain_id, info)
        return self._new_activation(grain_id, info)

    def local_activation(self, grain_id: GrainId, info: GrainClassInfo) -> Activation:
        """The activation of *grain_id* here, created if there is none (cluster placement
        chose this silo)."""
        act = self._activations.get(grain_id)
        if act is not None and act.state != DEAD:
            return act
        if info.max_local_workers is not None:
            return self._pick_worker(grain_id, info)
        return self._new_activation(grain_id, info)

    def _new_activation(self, grain_id: GrainId, info: GrainClassInfo) -> Activation:
        if not self.accepting:
            raise SiloUnavailableError(f"the silo is not running: cannot activate {grain_id}")
        act = Activation(self, grain_id, info)  # touched: its idle clock starts at the next sweep
        self.activations_created += 1
        if info.max_local_workers is None:
            self._activations[grain_id] = act
        else:
            self._workers.setdefault(grain_id, []).append(act)
        return act

    def _pick_worker(self, grain_id: GrainId, info: GrainClassInfo) -> Activation:
        pool = self._workers.get(grain_id, [])
        live = [a for a in pool if a.state <= ACTIVE]
        for act in live:
            if act.state == ACTIVE and act.running == 0 and act.queued == 0:
                return act
        assert info.max_local_workers is not None
        if len(live) < info.max_local_workers:
            return self._new_activation(grain_id, info)
        return min(live, key=lambda a: a.queued + a.running)

    def redispatch(self, grain_id: GrainId, info: GrainClassInfo, call: Call) -> None:
        """Hand a call that never started on a dead activation to a new one."""
        if self._cluster is not None and info.max_local_workers is None:
            self._cluster.reroute(call, self.call_here)  # wherever the grain is (or goes) now
            return
        if not self.accepting:
            reason = f"the silo is shutting down: {call.describe()} was not run"
            call.fail(SiloUnavailableError(reason))
            return
        act = self._activations.get(grain_id)
        if act is None or act.state == DEAD:
            if info.max_local_workers is not None:
                act = self._pick_worker(grain_id, info)
            else:
                act = self._new_activation(grain_id, info)
        act.post(call)

    def forget(self, act: Activation) -> None:
        if self._activations.get(act.grain_id) is act:
            del self._activations[act.grain_id]
        pool = self._workers.get(act.grain_id)
        if pool is not None and act in pool:
            pool.remove(act)
            if not pool:
                del self._workers[act.grain_id]

    def deactivate_soon(self, act: Activation, reason: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(act.deactivate, reason)

    def activations(self) -> list[Activation]:
        acts = list(self._activations.values())
        for pool in self._workers.values():
            acts.extend(pool)
        return acts

    def count_by_type(self) -> Counter[str]:
        return Counter(str(a.grain_id.type) for a in self.activations())

    # -- lifetime -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: idle collection (the response-timeout wheel runs beside
        it, in the silo's nursery)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.accepting = True
            nursery.start_soon(self._collect_idle)
            task_status.started()

    async def _collect_idle(self) -> None:
        quantum = self.config.collection_quantum
        while True:
            await trio.sleep(quantum)
            self.collect_idle(trio.current_time())

    def collect_idle(self, now: float) -> int:
        """Deactivate activations idle for longer than their collection age."""
        default_age = self.config.collection_age
        started = 0
        for act in self.activations():
            if act.state != ACTIVE or act.running or act.queued:
                continue
            if act.touched:
                act.touched = False
                act.idle_since = now
                continue
            if now < act.keep_alive_until:
                continue
            age = act.info.collection_age or default_age
            if now - act.idle_since >= age:
                self.deactivate_soon(act, "idle")
                started += 1
        return started

    async def shutdown(self, *, crashed: bool = False) -> None:
        """Stop accepting calls and deactivate everything (bounded by the deactivation
        timeout); *crashed*: the silo was killed, so nothing is deactivated (its grains may
        be active elsewhere already)."""
        self.accepting = False
        if crashed:
            self._drop_all("the silo was killed")
            return
        timeout = self.config.deactivation_timeout
        with trio.move_on_after(timeout + 1) as scope:
            self._shutdown_scope = scope
            async with trio.open_nursery() as nursery:
                for act in self.activations():
                    if act.is_quiet() and act.directory_entry is None:
                        act.state = DEAD  # nothing to run and no task: no need for one now
                    else:
                        nursery.start_soon(act.deactivate, "silo shutting down")
        if scope.cancelled_caught and not self._abandoned:
            stuck = [str(a.grain_id) for a in self.activations() if a.state != DEAD]
            log.warning(
                "silo shutdown gave up after %s s on %d activations whose turns did not end "
                "(their on_deactivate did not run): %s",
                timeout + 1,
                len(stuck),
                ", ".join(stuck[:10]) + (" ..." if len(stuck) > 10 else ""),
            )
        self._drop_all("the silo shut down")

    def abandon_shutdown(self) -> None:
        """Cut a shutdown under way short: what is still deactivating is dropped."""
        self._abandoned = True
        if self._shutdown_scope is not None:
            self._shutdown_scope.cancel()

    def _drop_all(self, why: str) -> None:
        self.wheel.fail_all(
            lambda call: SiloUnavailableError(f"{why} before {call.describe()} replied")
        )
        # Calls queued on activations that never became active die with the silo.
        for act in self.activations():
            act.drop(lambda call: SiloUnavailableError(f"{why} before {call.describe()} ran"))
        self._activations.clear()
        self._workers.clear()

    def pending_calls(self) -> int:
        return self.wheel.pending()
