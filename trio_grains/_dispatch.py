"""The call path: from a reference to a local activation, or to the cluster.

:meth:`Dispatcher.invoke` is the hot path. A call to an idle local activation runs the
grain method right in the caller's task ("turn stealing", when
:meth:`~trio_grains._activation.Activation.try_begin_turn` allows it); everything else
(a busy grain, activation, one-way calls, isolated calls) goes through
:meth:`Activation.call <trio_grains._activation.Activation.call>`; a grain that is not
here, in a cluster, through the cluster's :class:`RemoteCalls`.

May import: values, grains, references, calls, activations, the catalog, metrics. Not the
cluster, streams, reminders or the silo: the cluster is handed in as :class:`RemoteCalls`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import outcome

from ._activation import ACTIVE, Activation
from ._calls import Call
from ._exceptions import (
    ActivationRaceLostError,
    GrainCallTimeoutError,
    GrainMethodError,
    GrainTypeError,
    SiloUnavailableError,
)
from ._grain import GrainClassInfo, GrainInterface, class_info
from ._ids import GrainId, GrainKey, check_key_length
from ._methods import MethodInfo
from ._metrics import timed_call
from ._reference import GrainReference, reference_class

if TYPE_CHECKING:
    from ._catalog import Catalog, LocalCall
    from ._serialization import Codec

__all__ = ["Dispatcher", "RemoteCalls", "timeout_error"]

G = TypeVar("G", bound=GrainInterface)


def timeout_error(call: Call, timeout: float) -> Exception:
    """The error of a call that got no reply within ``SiloConfig.response_timeout``."""
    return GrainCallTimeoutError(
        f"no reply from {call.describe()} within {timeout} s (response_timeout): the grain is busy "
        "or deadlocked in a call cycle (A calls B calls A); make it @reentrant or the method "
        "@always_interleave, or raise SiloConfig.response_timeout"
    )


class RemoteCalls(Protocol):
    """What the dispatcher asks of the cluster layer (``_cluster.routing.SiloCluster``)."""

    async def call(
        self,
        grain_id: GrainId,
        method: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        local: LocalCall,
        *,
        prefer_local: bool = False,
    ) -> Any:
        """Call *method* on *grain_id* wherever it is or is placed (through *local* if
        that is this silo); *prefer_local*: a new activation of a class without a
        placement strategy of its own goes to this silo."""


class Dispatcher:
    """References' runtime in a silo: get references, and carry their calls to a turn."""

    def __init__(
        self,
        catalog: Catalog,
        codec: Codec,
        *,
        isolate: bool = False,
        max_key_length: int,
        remote: RemoteCalls | None = None,
    ) -> None:
        self.catalog = catalog
        self.codec = codec
        self.isolate = isolate
        self.max_key_length = max_key_length
        self.remote = remote

    # -- references ---------------------------------------------------------------------------

    def get_grain(self, grain_class: type[G], key: GrainKey, *, key_ext: str | None = None) -> G:
        info = class_info(grain_class)
        grain_id = GrainId.create(info.grain_type, key, key_ext)
        check_key_length(grain_id.key, self.max_key_length)
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
        """Call *name* on the grain *grain_id* (its hosted class), as a reference would:
        reminders' ticks and stream agents' deliveries.

        In a cluster, a grain that is not active anywhere yet is activated on this silo
        (unless its class declares a placement strategy): the item or tick is here, and
        so is, likely, the next one (placement that follows the data; Orleans users get
        it with ``PreferLocalPlacement``).
        """
        info = self.catalog.implementation(grain_id, None)
        ref = reference_class(info.cls)(self, grain_id)
        remote = self.remote
        if (
            remote is not None
            and info.placement is None
            and info.max_local_workers is None
            and self.catalog.lookup(grain_id) is None
        ):
            method = ref._info.methods.get(name)
            if method is not None:
                return await remote.call(
                    grain_id, method, args, {}, self.call_here, prefer_local=True
                )
        return await self.invoke(ref, name, args, {})

    # -- the call path ------------------------------------------------------------------------

    async def invoke(
        self, ref: GrainReference, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        act = ref._act
        if act is None or act.state != ACTIVE:
            act = self.catalog.find(ref._grain_id, ref.interface)
            if act is None:  # in a cluster, and not activated here
                return await self._call_remote(ref, name, args, kwargs)
            if act.state == ACTIVE:
                ref._act = act
        method = act.methods.get(name)
        if method is None:
            raise self._no_method(act.info, ref, name)
        kind = method.steal_kind  # (one-way and isolated calls: never stolen)
        if act.try_begin_turn(kind, act.queued):
            # Turn stealing: the turn runs in this task, nothing is queued or replied.
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
        try:
            return await self.deliver(act, method, args, kwargs)
        except ActivationRaceLostError:
            # another silo activated it first: call it there
            return await self._call_remote(ref, name, args, kwargs)

    async def _call_remote(
        self, ref: GrainReference, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        remote = self.remote
        assert remote is not None
        method = ref._info.methods.get(name)
        if method is None:
            raise GrainMethodError(f"{ref.interface.__qualname__} has no grain method {name!r}")
        return await remote.call(ref._grain_id, method, args, kwargs, self.call_here)

    async def call_here(
        self, grain_id: GrainId, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call *method* (by name) on the activation of *grain_id* in this silo, created if
        need be: the cluster's way in when placement chose this silo."""
        act, local = self.catalog.local_method(grain_id, method)
        return await self.deliver(act, local, args, kwargs)

    async def deliver(
        self, act: Activation, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Call *method* on the local activation *act* (not the turn-stealing fast path);
        with ``isolate_local_calls``, arguments and the outcome are copied as on a wire."""
        if not self.catalog.accepting:
            raise SiloUnavailableError(f"the silo is shutting down: cannot call {act.grain_id}")
        if not self.isolate:
            return await act.call(method, args, kwargs)
        kwargs = self.codec.copy_call(method, args, kwargs)
        result = await outcome.acapture(act.call, method, (), kwargs)
        return self._copy_outcome(method, result).unwrap()

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
