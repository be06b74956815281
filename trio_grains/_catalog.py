"""The silo's activations and the call path from a reference to a turn.

:meth:`Catalog.invoke` is the hot path. A call to an idle local activation runs the grain
method right in the caller's task, with two counters guarding the one-turn-at-a-time rule;
everything else (a busy grain, activation, one-way calls, isolated calls) takes
:meth:`Catalog._invoke_slow`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, TypeVar

import outcome
import trio

from ._activation import ACTIVATING, ACTIVE, DEAD, Activation
from ._calls import EXCLUSIVE, INTERLEAVE, READ_ONLY, Call, TimeoutWheel, wait_reply
from ._exceptions import (
    ActivationRaceLostError,
    GrainCallTimeoutError,
    GrainMethodError,
    GrainTypeError,
    SiloUnavailableError,
)
from ._grain import GrainClassInfo, GrainClassRegistry, GrainInterface, MethodInfo, class_info
from ._ids import GrainId, GrainKey, check_key_length
from ._metrics import SiloMetrics, timed_call
from ._reference import GrainReference, reference_class
from ._streams.model import implicit_subscriptions
from ._tracing import SpanKind, Tracer, call_attributes, traced_methods

if TYPE_CHECKING:
    from ._cluster.routing import SiloCluster
    from ._config import SiloConfig
    from ._reminders import ReminderService
    from ._serialization import Codec
    from ._storage import GrainStorage
    from ._streams.provider import StreamProvider

__all__ = ["Catalog"]

log = logging.getLogger("trio_grains.catalog")

G = TypeVar("G", bound=GrainInterface)


def _timeout_error(call: Call, timeout: float) -> Exception:
    return GrainCallTimeoutError(
        f"no reply from {call.describe()} within {timeout} s (response_timeout): the grain is busy "
        "or deadlocked in a call cycle (A calls B calls A); make it @reentrant or the method "
        "@always_interleave, or raise SiloConfig.response_timeout"
    )


class Catalog:
    """Activations by grain id, and the runtime references call into."""

    def __init__(self, config: SiloConfig, registry: GrainClassRegistry, codec: Codec) -> None:
        self.config = config
        self.registry = registry
        self.codec = codec
        self.isolate = config.isolate_local_calls
        self.accepting = False
        self._nursery: trio.Nursery | None = None
        self._activations: dict[GrainId, Activation] = {}
        self._workers: dict[GrainId, list[Activation]] = {}
        self.wheel = TimeoutWheel(config.response_timeout, _timeout_error)
        self.activations_created = 0
        self.silo_id = config.name  #: the silo's id (with its cluster suffix), set by the silo
        self.metrics: SiloMetrics | None = SiloMetrics() if config.metrics else None
        #: the tracing provider's tracer (``SiloConfig.tracing``), set by the silo
        self.tracer: Tracer | None = None
        self._tables: dict[type, dict[str, MethodInfo]] = {}
        self._remote_tables: dict[type, dict[str, MethodInfo]] = {}
        self.max_queued_calls = config.max_queued_calls
        #: storage name -> (opened provider, provider name), set by the silo
        self.storages: dict[str, tuple[GrainStorage, str]] = {}
        self.reminders: ReminderService | None = None
        #: stream provider name -> running provider (each registers itself while it runs)
        self.streams: dict[str, StreamProvider] = {}
        #: in a cluster: directory, remote calls and forwarding (``None``: a lone silo)
        self.cluster: SiloCluster | None = None
        #: set when the silo is killed rather than stopped (tests): nothing is deactivated
        self.crashed = False
        self._shutdown_scope: trio.CancelScope | None = None

    def method_table(self, info: GrainClassInfo) -> dict[str, MethodInfo]:
        """The methods activations of *info* run: the class's own, or with tracing or
        metrics on, wrapped (built once per class per silo)."""
        if self.tracer is None and self.metrics is None:
            return info.methods
        table = self._tables.get(info.cls)
        if table is None:
            grain_type = str(info.grain_type)
            table = info.methods
            if self.tracer is not None:
                table = traced_methods(table, self.tracer, grain_type)
            if self.metrics is not None:  # outermost: its timings include the spans
                table = self.metrics.instrument_methods(grain_type, table)
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
                allowed = info.declared | {"receive_reminder"}
                allowed |= {sub.handler for sub in implicit_subscriptions(info.cls)}
                table = {name: m for name, m in table.items() if name in allowed}
            self._remote_tables[info.cls] = table
        return table

    def reminder_service(self) -> ReminderService:
        if self.reminders is None:
            raise SiloUnavailableError("the silo's reminder service is not running")
        return self.reminders

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise SiloUnavailableError("the silo is not running: use 'async with open_silo()'")
        return self._nursery

    # -- references ---------------------------------------------------------------------------

    def get_grain(self, grain_class: type[G], key: GrainKey, *, key_ext: str | None = None) -> G:
        info = class_info(grain_class)
        grain_id = GrainId.create(info.grain_type, key, key_ext)
        check_key_length(grain_id.key, self.config.max_key_length)
        return reference_class(grain_class)(self, grain_id)  # type: ignore[return-value]

    def reference(self, grain_class: type[G], grain_id: GrainId | str) -> G:
        if isinstance(grain_id, str):
            grain_id = GrainId.parse(grain_id)
        info = class_info(grain_class)
        if grain_id.type != info.grain_type:
            raise GrainTypeError(
                f"grain id '{grain_id}' is of type '{grain_id.type}', but "
                f"{grain_class.__qualname__} is '{info.grain_type}'"
            )
        return reference_class(grain_class)(self, grain_id)  # type: ignore[return-value]

    async def invoke_by_id(self, grain_id: GrainId, name: str, args: tuple[Any, ...]) -> Any:
        """Call *name* on the grain *grain_id* (its hosted class), as a reference would."""
        info = self._implementation(grain_id, None)
        return await self.invoke(reference_class(info.cls)(self, grain_id), name, args, {})

    # -- the call path ------------------------------------------------------------------------

    async def invoke(
        self, ref: GrainReference, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        act = ref._act
        if act is None or act.state != ACTIVE:
            act = self._find(ref)
            if act is None:  # in a cluster, and not activated here
                assert self.cluster is not None
                return await self.cluster.invoke(ref, name, args, kwargs)
        method = act.methods.get(name)
        if method is None:
            raise self._no_method(act.info, ref, name)
        kind = method.kind
        if (
            act.state == ACTIVE
            and not method.one_way
            and not self.isolate
            and (
                kind == INTERLEAVE
                or (
                    act.queued == 0
                    and (act.running == 0 or (kind == READ_ONLY and act.writers == 0))
                )
            )
        ):
            # Turn stealing: the turn runs in this task, nothing is queued or replied. The
            # condition is Activation.may_start() plus "nothing queued ahead", inlined (and
            # begin_turn below) because this is the hot path: keep the two in step.
            act.running += 1
            if kind != READ_ONLY:
                act.writers += 1
            act.touched = True
            counter = method.counter
            try:
                if counter is None:
                    return await method.inline(act.grain, *args, **kwargs)
                # Metrics on: counted here rather than by the wrapper in method.func, which
                # would cost this path (the cheapest) a coroutine frame per call.
                counter.left -= 1
                if counter.left:
                    return await method.inline(act.grain, *args, **kwargs)
                counter.new_lap()
                return await timed_call(counter, method.inline, act.grain, args, kwargs)
            except Exception:
                if counter is not None:
                    counter.errors += 1
                raise
            finally:
                act.end_turn(kind)
        return await self._invoke_slow(ref, act, method, args, kwargs)

    async def _invoke_slow(
        self,
        ref: GrainReference,
        act: Activation,
        method: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            return await self.deliver(act, method, args, kwargs)
        except ActivationRaceLostError:
            assert self.cluster is not None  # another silo activated it first: call it there
            return await self.cluster.call(ref._grain_id, method, args, kwargs)

    async def deliver(
        self, act: Activation, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call *method* on the local activation *act* (not the inlined fast path)."""
        if not self.accepting:
            raise SiloUnavailableError(f"the silo is shutting down: cannot call {act.grain_id}")
        if not self.isolate:
            return await self._deliver(act, method, args, kwargs)
        kwargs = self.codec.copy_call(method, args, kwargs)
        result = await outcome.acapture(self._deliver, act, method, (), kwargs)
        return self._copy_outcome(method, result).unwrap()

    async def _deliver(
        self, act: Activation, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run the call now in this task if the rules allow, else queue it and wait."""
        kind = method.kind
        if method.one_way:
            call = Call(method, args, kwargs, target=act.grain_id)
            call.kind = kind
            if self.tracer is not None:
                call.trace = self.tracer.current()
            act.post_one_way(call)
            return None
        if act.state == ACTIVATING and not act.activation_claimed and act.queued == 0:
            await act.activate()  # raises (and leaves nothing behind) if activation fails
            if kind != EXCLUSIVE:  # let queued read-only / interleaving calls in beside it
                act.end_turn(EXCLUSIVE)
                act.begin_turn(kind)
            try:
                return await method.func(act.grain, *args, **kwargs)
            finally:
                act.end_turn(kind)
        if act.may_start(kind) and (act.queued == 0 or kind == INTERLEAVE):
            # Reached with isolate_local_calls (invoke's inlined fast path is off then).
            act.begin_turn(kind)
            try:
                return await method.func(act.grain, *args, **kwargs)
            finally:
                act.end_turn(kind)
        call = Call(method, args, kwargs, target=act.grain_id)
        call.kind = kind
        if self.tracer is not None:
            return await self._wait_traced(self.tracer, act, call)
        act.post(call)
        if call.result is None:  # (not refused by a full mailbox)
            self.wheel.add(call)
        return await wait_reply(call)

    async def _wait_traced(self, tracer: Tracer, act: Activation, call: Call) -> Any:
        """Queue *call* and wait for it inside a caller-side span, which the turn continues."""
        assert call.method is not None
        grain_type, name = str(act.grain_id.type), call.method.name
        attributes = call_attributes(grain_type, name, act.grain_id)
        with tracer.span(f"{grain_type}/{name}", SpanKind.CLIENT, attributes):
            call.trace = tracer.current()
            act.post(call)
            if call.result is None:  # (not refused by a full mailbox)
                self.wheel.add(call)
            return await wait_reply(call)

    def _copy_outcome(
        self, method: MethodInfo, result: outcome.Outcome[Any]
    ) -> outcome.Outcome[Any]:
        if isinstance(result, outcome.Value):
            return outcome.Value(
                self.codec.decode_result(method, self.codec.encode_result(method, result.value))
            )
        assert isinstance(result, outcome.Error)
        exc = result.error
        if not isinstance(exc, Exception):
            return result
        return outcome.Error(self.codec.decode_exception(self.codec.encode_exception(exc)))

    def _no_method(self, info: GrainClassInfo, ref: GrainReference, name: str) -> GrainMethodError:
        names = ", ".join(sorted(info.methods)) or "(none)"
        return GrainMethodError(
            f"{info.describe()} has no grain method {name!r} (called through "
            f"{ref.interface.__qualname__} on {ref.grain_id}); its methods: {names}"
        )

    # -- activations --------------------------------------------------------------------------

    def _implementation(self, grain_id: GrainId, iface: type | None) -> GrainClassInfo:
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

    def _find(self, ref: GrainReference) -> Activation | None:
        """The local activation to call; ``None`` in a cluster when the grain is not here."""
        grain_id = ref._grain_id
        act = self._activations.get(grain_id)
        if act is not None and act.state != DEAD:
            if act.state == ACTIVE:
                ref._act = act
            return act
        if self.cluster is not None:
            info = self.registry.get(grain_id.type)
            if info is not None and info.max_local_workers is not None:
                return self._pick_worker(grain_id, info)  # stateless workers stay local
            return None
        info = self._implementation(grain_id, ref.interface)
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
        if self.cluster is not None and info.max_local_workers is None:
            self.cluster.reroute(call)  # wherever the grain is (or goes) now
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
        """Serve until cancelled: response timeouts and idle collection."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.accepting = True
            nursery.start_soon(self.wheel.run)
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

    async def shutdown(self) -> None:
        """Stop accepting calls and deactivate everything (bounded by the deactivation timeout)."""
        self.accepting = False
        if self.crashed:
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
        if scope.cancelled_caught and not self.crashed:
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
        self.crashed = True
        if self._shutdown_scope is not None:
            self._shutdown_scope.cancel()

    def _drop_all(self, why: str) -> None:
        self.wheel.fail_all(
            lambda call: SiloUnavailableError(f"{why} before {call.describe()} replied")
        )
        # Calls queued on activations that never became active die with the silo.
        for act in self.activations():
            act.state = DEAD
            act._cancel_nursery()
            for call in act._take_pending():
                call.fail(SiloUnavailableError(f"{why} before {call.describe()} ran"))
        self._activations.clear()
        self._workers.clear()

    def pending_calls(self) -> int:
        return self.wheel.pending()
