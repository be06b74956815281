"""One activation: a grain object, its mailbox, its turns, its timers and its nursery.

Turn rules (Orleans'): a call may start when the activation is idle; an ``always_interleave``
call may start at any time; every call to a ``reentrant`` grain may start at any time; a
``read_only`` call may start while only read-only turns run. Others wait in the mailbox, in
order.

Where a turn runs: a caller whose call may start at once runs the turn in its *own* task
("turn stealing": no mailbox hop, no reply hop; the caller's cancel scopes apply to the turn
directly). Calls that must wait, one-way calls and timer ticks go through the mailbox, a
Trio memory channel drained by the activation's own task. That task, and the activation's
nursery that holds it, the timers and ``Grain.start_soon`` tasks, is started the first time
the activation needs it, so an idle activation costs no task at all.

May import: layers 0-4 (values up to grains, calls, timers, storage, tracing and metrics).
Not the catalog, the dispatcher or above: its host is handed in as an :class:`ActivationHost`.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import outcome
import trio

from ._calls import ABANDONED, RUNNING, Call, TimeoutWheel, log_one_way_outcome, wait_reply
from ._exceptions import (
    ActivationOverloadedError,
    ActivationRaceLostError,
    InternalError,
)
from ._grain import Grain, GrainServices
from ._logging import GRAIN_ID, SILO_ID
from ._methods import EXCLUSIVE, INTERLEAVE, READ_ONLY
from ._storage import GrainStorage, PersistentState, load_states
from ._timers import GrainTimer, start_timer
from ._tracing import ATTR_GRAIN_ID, ATTR_SILO_ID, SpanKind, Tracer, call_attributes

if TYPE_CHECKING:
    from ._grain import GrainClassInfo
    from ._ids import GrainId
    from ._methods import MethodInfo
    from ._serialization import Codec

__all__ = ["ACTIVATING", "ACTIVE", "DEACTIVATING", "DEAD", "Activation", "ActivationHost"]

log = logging.getLogger("trio_grains.activation")

ACTIVATING, ACTIVE, DEACTIVATING, DEAD = 0, 1, 2, 3
_STATE_NAMES = ("activating", "active", "deactivating", "dead")
_NO_DELAY = -math.inf  # one float shared by every activation that has no keep-alive


class ActivationHost(Protocol):
    """What an activation needs from the silo that hosts it (the catalog implements it).

    Activations reach everything above them through this: the directory registration of a
    cluster (``register`` / ``unregister``, no-ops in a lone silo), the table they leave
    (``forget``), and where calls go that never ran here (``redispatch``).
    """

    silo_id: str
    codec: Codec
    tracer: Tracer | None
    wheel: TimeoutWheel
    services: GrainServices
    storages: Mapping[str, tuple[GrainStorage, str]]
    max_queued_calls: int
    deactivation_timeout: float

    @property
    def nursery(self) -> trio.Nursery: ...

    def method_table(self, info: GrainClassInfo) -> dict[str, MethodInfo]: ...

    def forget(self, act: Activation) -> None: ...

    def deactivate_soon(self, act: Activation, reason: str) -> None: ...

    def redispatch(self, grain_id: GrainId, info: GrainClassInfo, call: Call) -> None: ...

    async def register(self, act: Activation) -> None: ...

    async def unregister(self, act: Activation) -> None: ...


class Activation:
    """The runtime's side of one activation of a grain."""

    __slots__ = (
        "_held",
        "_lot",
        "_nursery",
        "_pending_spawns",
        "_recv",
        "_send",
        "_worker_done",
        "activation_claimed",
        "deactivate_reason",
        "directory_entry",
        "grain",
        "grain_id",
        "idle_since",
        "info",
        "keep_alive_until",
        "methods",
        "queued",
        "running",
        "runtime",
        "state",
        "states",
        "touched",
        "writers",
    )

    def __init__(self, runtime: ActivationHost, grain_id: GrainId, info: GrainClassInfo) -> None:
        self.runtime = runtime
        self.grain_id = grain_id
        self.info = info
        self.methods = runtime.method_table(info)
        self.grain: Grain | None = None
        self.states: dict[str, PersistentState[Any]] | None = None
        self.state = ACTIVATING
        self.activation_claimed = False
        self.running = 0  # turns running now
        self.writers = 0  # of which not read-only
        self.queued = 0  # calls in the mailbox or held by the worker, not yet started
        self.touched = True
        self.idle_since = 0.0
        self.keep_alive_until = _NO_DELAY
        self.deactivate_reason: str | None = None
        #: in a cluster: its directory registration (the cluster layer's value; opaque here)
        self.directory_entry: object | None = None
        self._send: trio.MemorySendChannel[Call] | None = None
        self._recv: trio.MemoryReceiveChannel[Call] | None = None
        self._held: Call | None = None
        self._lot: trio.lowlevel.ParkingLot | None = None
        self._nursery: trio.Nursery | None = None
        self._pending_spawns: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] | None
        self._pending_spawns = None  # only while tasks wait for the activation's nursery
        self._worker_done: trio.Event | None = None

    def __repr__(self) -> str:
        return f"<Activation {self.grain_id} {_STATE_NAMES[self.state]}>"

    # -- scheduling ---------------------------------------------------------------------------

    def try_begin_turn(self, kind: int, ahead: int) -> bool:
        """The turn rule (its only copy): begin a turn of *kind* now if it may start, with
        *ahead* calls waiting in the mailbox before it; ``False`` if it must wait.

        An interleaving call starts whenever the activation is active; an exclusive one
        when no turn runs, a read-only one when only read-only turns run, and neither
        overtakes a call that waits; ``NEVER_STOLEN`` never starts this way. Callers
        arriving now pass ``self.queued``; the mailbox's task passes 0 for the call at its
        head.
        """
        # Branches by kind, the common one first: this runs on every local call.
        if kind == EXCLUSIVE:
            if ahead or self.running or self.state != ACTIVE:
                return False
            self.writers += 1
        elif kind == READ_ONLY:
            if ahead or self.writers or self.state != ACTIVE:
                return False
        elif kind == INTERLEAVE:
            if self.state != ACTIVE:
                return False
            self.writers += 1
        else:  # NEVER_STOLEN
            return False
        self.running += 1
        self.touched = True
        return True

    def begin_turn(self, kind: int) -> None:
        self.running += 1
        if kind != READ_ONLY:
            self.writers += 1
        self.touched = True

    def end_turn(self, kind: int) -> None:
        self.running -= 1
        if kind != READ_ONLY:
            self.writers -= 1
        if self.running == 0 and self.deactivate_reason is not None and self.state == ACTIVE:
            self.runtime.deactivate_soon(self, self.deactivate_reason)
        if self._lot:  # (a ParkingLot is false while nobody is parked)
            self._lot.unpark_all()

    async def call(self, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call *method* on this activation: run the turn now in this task if the turn
        rule allows (activating the grain first if nobody is), else queue it and wait."""
        kind = method.kind
        if method.one_way:
            call = Call(method, args, kwargs, target=self.grain_id)
            call.kind = kind
            tracer = self.runtime.tracer
            if tracer is not None:
                call.trace = tracer.current()
            self.post_one_way(call)
            return None
        if self.state == ACTIVATING and not self.activation_claimed and self.queued == 0:
            await self.activate()  # raises (and leaves nothing behind) if activation fails
            if kind != EXCLUSIVE:  # let queued read-only / interleaving calls in beside it
                self.end_turn(EXCLUSIVE)
                self.begin_turn(kind)
            try:
                return await method.func(self.grain, *args, **kwargs)
            finally:
                self.end_turn(kind)
        if self.try_begin_turn(kind, self.queued):
            try:
                return await method.func(self.grain, *args, **kwargs)
            finally:
                self.end_turn(kind)
        call = Call(method, args, kwargs, target=self.grain_id)
        call.kind = kind
        tracer = self.runtime.tracer
        if tracer is not None:
            return await self._wait_traced(tracer, call)
        self.post(call)
        if call.result is None:  # (not refused by a full mailbox)
            self.runtime.wheel.add(call)
        return await wait_reply(call)

    async def _wait_traced(self, tracer: Tracer, call: Call) -> Any:
        """Queue *call* and wait for it inside a caller-side span, which the turn continues."""
        assert call.method is not None
        grain_type, name = str(self.grain_id.type), call.method.name
        attributes = call_attributes(grain_type, name, self.grain_id)
        with tracer.span(f"{grain_type}/{name}", SpanKind.CLIENT, attributes):
            call.trace = tracer.current()
            self.post(call)
            if call.result is None:  # (not refused by a full mailbox)
                self.runtime.wheel.add(call)
            return await wait_reply(call)

    def post(self, call: Call) -> None:
        """Put *call* in the mailbox (starting the activation's task if need be).

        A call that may interleave with anything runs at once in a task of its own instead:
        it must not wait behind a turn that the activation's task is running.

        A full mailbox (``SiloConfig.max_queued_calls``) fails the call at once with
        :class:`~trio_grains.ActivationOverloadedError` instead of queueing it.
        """
        self._ensure_worker()
        if call.kind == INTERLEAVE and self.state == ACTIVE:
            self.begin_turn(INTERLEAVE)
            self._spawn(self._run_turn_in_own_scope, call)
            return
        if self.queued >= self.runtime.max_queued_calls:
            call.fail(
                ActivationOverloadedError(
                    f"{call.describe()} refused: {self.grain_id} already has {self.queued} "
                    "calls waiting (SiloConfig.max_queued_calls); retry later"
                )
            )
            return
        assert self._send is not None
        self.queued += 1
        self._send.send_nowait(call)

    def _ensure_worker(self) -> None:
        if self._worker_done is None:
            self._send, self._recv = trio.open_memory_channel[Call](math.inf)
            self._worker_done = trio.Event()
            self._lot = trio.lowlevel.ParkingLot()
            # A fresh context: the task must not inherit the context variables of whichever
            # caller happened to start it.
            nursery = self.runtime.nursery
            name = f"grain {self.grain_id}"
            contextvars.Context().run(lambda: nursery.start_soon(self._worker, name=name))

    # -- activation ---------------------------------------------------------------------------

    def _span_attributes(self) -> dict[str, str]:
        return {
            ATTR_GRAIN_ID: str(self.grain_id),
            ATTR_SILO_ID: self.runtime.silo_id,
            "trio_grains.grain_class": self.info.class_name,
        }

    async def activate(self) -> None:
        """Create the grain object and run ``on_activate``, holding an exclusive turn.

        On success the caller still holds the turn and must ``end_turn(EXCLUSIVE)``. On
        failure the activation is dead and gone, and the exception propagates.
        """
        tracer = self.runtime.tracer
        if tracer is None:
            await self._activate()
            return
        name = f"activate {self.grain_id.type}"
        with tracer.span(name, SpanKind.INTERNAL, self._span_attributes()):
            await self._activate()

    async def _activate(self) -> None:
        self.activation_claimed = True
        self.begin_turn(EXCLUSIVE)
        runtime = self.runtime
        try:
            if self.info.max_local_workers is None:
                await runtime.register(self)  # raises ActivationRaceLostError: not here
            cls: type[Grain] = self.info.cls
            grain = cls.__new__(cls)
            grain._activation = self
            cls.__init__(grain)
            self.grain = grain
            if self.info.states:
                self.states = await load_states(
                    self.info.states, self.grain_id, runtime.storages, runtime.codec
                )
            if type(grain).on_activate is not _BASE_ON_ACTIVATE:
                await grain.on_activate()
        except BaseException:
            self.running = self.writers = 0
            self.state = DEAD
            runtime.forget(self)
            self._cancel_nursery()
            if self.directory_entry is not None:
                with trio.CancelScope(shield=True):
                    await runtime.unregister(self)
            self._redispatch_pending()
            raise
        self.state = ACTIVE

    # -- the activation's own task ------------------------------------------------------------

    async def _worker(self) -> None:
        assert self._worker_done is not None
        self._label_task()  # it runs in a fresh context (see _ensure_worker)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for fn, args in self._pending_spawns or ():
                    nursery.start_soon(fn, *args)
                self._pending_spawns = None
                await self._drain_mailbox(nursery)
                nursery.cancel_scope.cancel()
        except Exception as exc:
            # Grain code cannot get here (turns capture their exceptions, background tasks
            # log theirs): this is a bug in trio-grains. Contain it to this activation.
            log.critical(
                "internal error in the activation of %s: it is discarded and its pending "
                "calls fail. Please report this bug to trio-grains with this traceback.",
                self.grain_id,
                exc_info=exc,
            )
            self._discard(InternalError(f"internal error in the activation of {self.grain_id}"))
        finally:
            self._nursery = None
            self._worker_done.set()

    def _discard(self, error: InternalError) -> None:
        self.state = DEAD
        self.runtime.forget(self)
        for call in self._take_pending():
            call.fail(error)

    async def _next_call(self) -> Call | None:
        if self._held is not None:
            return self._held
        assert self._recv is not None
        try:
            call = self._recv.receive_nowait()
        except trio.WouldBlock:
            try:
                call = await self._recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return None
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None
        self._held = call
        return call

    async def _drain_mailbox(self, nursery: trio.Nursery) -> None:
        assert self._lot is not None
        while True:
            with trio.CancelScope() as scope:
                while not scope.cancel_called:
                    if self.state >= DEACTIVATING:
                        return
                    call = await self._next_call()
                    if call is None:
                        return
                    if call.state == ABANDONED or call.deadline <= trio.current_time():
                        self._held = None  # the caller gave up, or its deadline passed
                        self.queued -= 1
                        continue
                    if self.state == ACTIVATING and not self.activation_claimed:
                        await self._activate_for(call, scope)
                        continue
                    if call.method is not None:
                        call.kind = call.method.kind
                    began = self.try_begin_turn(call.kind, 0)
                    while not began and call.state != ABANDONED:
                        if self.state >= DEACTIVATING:
                            return
                        await self._lot.park()
                        began = self.try_begin_turn(call.kind, 0)
                    self._held = None
                    self.queued -= 1
                    if call.state == ABANDONED:  # the caller gave up before its turn
                        if began:
                            self.end_turn(call.kind)
                        continue
                    if call.kind == EXCLUSIVE:
                        await self._run_in(scope, call)
                    else:
                        nursery.start_soon(self._run_turn_in_own_scope, call)

    async def _activate_for(self, call: Call, scope: trio.CancelScope) -> None:
        """Nobody is activating and the first call came through the mailbox."""
        self._held = None
        self.queued -= 1
        tracer = self.runtime.tracer
        try:
            if tracer is None or call.trace is None:
                await self.activate()
            else:
                with tracer.resume(call.trace):  # the activating call's trace
                    await self.activate()
        except ActivationRaceLostError:
            self.runtime.redispatch(self.grain_id, self.info, call)  # to the winner
            return
        except Exception as exc:
            call.fail(exc)  # the activation is dead; the drain loop sees it and ends
            return
        # ``activate`` left us holding an exclusive turn: run this call inside it.
        call.kind = EXCLUSIVE
        await self._run_in(scope, call)

    async def _run_in(self, scope: trio.CancelScope, call: Call) -> None:
        """Run *call* under the mailbox's scope, bounded by a remote caller's deadline."""
        call.scope = scope
        if call.deadline == math.inf:
            await self.run_turn(call)
        else:
            scope.deadline = call.deadline
            await self.run_turn(call)
            scope.deadline = math.inf

    async def _run_turn_in_own_scope(self, call: Call) -> None:
        with trio.CancelScope(deadline=call.deadline) as scope:
            call.scope = scope
            await self.run_turn(call)

    async def run_turn(self, call: Call) -> None:
        """Run *call* as a turn (its turn already counted) and deliver the outcome."""
        if call.state == ABANDONED:
            self.end_turn(call.kind)
            return
        call.state = RUNNING
        result: outcome.Outcome[Any]
        try:
            if call.method is not None:
                if call.trace is None:
                    value = await call.method.func(self.grain, *call.args, **call.kwargs)
                else:
                    value = await self._run_traced(call)
            else:
                assert call.fn is not None
                value = await call.fn(*call.args)
        except Exception as exc:
            result = outcome.Error(exc)
        else:
            result = outcome.Value(value)
        finally:
            call.scope = None
            self.end_turn(call.kind)
        call.finish(result)

    async def _run_traced(self, call: Call) -> Any:
        """Run *call*'s method in its caller's trace (this task's context is not theirs)."""
        tracer = self.runtime.tracer
        assert tracer is not None
        assert call.method is not None
        with tracer.resume(call.trace):
            return await call.method.func(self.grain, *call.args, **call.kwargs)

    # -- background tasks ----------------------------------------------------------

    @property
    def is_active(self) -> bool:
        return self.state == ACTIVE

    @property
    def silo_id(self) -> str:
        return self.runtime.silo_id

    @property
    def services(self) -> GrainServices:
        """The silo's services a grain reaches: other grains, reminders, stream providers."""
        return self.runtime.services

    def start_timer(
        self,
        callback: Callable[[], Awaitable[Any]],
        *,
        due: float,
        period: float,
        interleave: bool,
        keep_alive: bool,
        name: str | None,
    ) -> GrainTimer:
        return start_timer(
            self,
            callback,
            due=due,
            period=period,
            interleave=interleave,
            keep_alive=keep_alive,
            name=name,
        )

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self.state >= DEACTIVATING:
            raise RuntimeError(f"{self.grain_id} is deactivating: it cannot start new tasks")
        self._spawn(self._guarded, fn, *args)

    def _label_task(self) -> None:
        """Log records of this task name the silo and this grain (see ``_logging``)."""
        SILO_ID.set(self.runtime.silo_id)
        GRAIN_ID.set(str(self.grain_id))

    async def _labelled(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._label_task()  # a task started from a caller's task has the caller's labels
        await fn(*args)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a task in the activation's nursery (as soon as it exists)."""
        if self._nursery is not None:
            self._nursery.start_soon(self._labelled, fn, *args)
        else:
            if self._pending_spawns is None:
                self._pending_spawns = []
            self._pending_spawns.append((fn, args))
            self._ensure_worker()

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a background task of the grain; its exception is logged, not fatal."""
        try:
            await fn(*args)
        except Exception:
            log.exception(
                "background task %s of %s raised", getattr(fn, "__qualname__", fn), self.grain_id
            )

    def post_one_way(self, call: Call) -> None:
        call.on_done = log_one_way_outcome(call.describe())
        self.post(call)

    # -- deactivation -------------------------------------------------------------------------

    def request_deactivation(self, reason: str) -> None:
        """Deactivate once no turn runs (now, if none does)."""
        if self.deactivate_reason is None:
            self.deactivate_reason = reason
        if self.running == 0 and self.state == ACTIVE:
            self.runtime.deactivate_soon(self, reason)

    def delay_deactivation(self, seconds: float) -> None:
        now = trio.current_time()
        self.keep_alive_until = now + seconds if seconds > 0 else _NO_DELAY

    def is_quiet(self) -> bool:
        """Idle, without a task of its own, and with no ``on_deactivate`` to run."""
        return (
            self.state == ACTIVE
            and self.running == 0
            and self._worker_done is None
            and self.grain is not None
            and type(self.grain).on_deactivate is _BASE_ON_DEACTIVATE
        )

    async def deactivate(self, reason: str) -> None:
        """Wait for running turns, run ``on_deactivate``, stop the nursery, hand off queued calls.

        Runs in a task of the silo (never inside a turn of this activation).
        """
        if self.state != ACTIVE:
            return
        self.state = DEACTIVATING
        tracer = self.runtime.tracer
        if tracer is None:
            await self._deactivate(reason)
            return
        attributes = {**self._span_attributes(), "trio_grains.reason": reason}
        name = f"deactivate {self.grain_id.type}"
        with tracer.span(name, SpanKind.INTERNAL, attributes, root=True):
            await self._deactivate(reason)

    async def _deactivate(self, reason: str) -> None:
        if self._lot is not None:
            self._lot.unpark_all()
        while self.running:
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()
        self.begin_turn(EXCLUSIVE)
        try:
            timeout = self.runtime.deactivation_timeout
            with trio.move_on_after(timeout) as scope:
                assert self.grain is not None
                await self.grain.on_deactivate(reason)
            if scope.cancelled_caught:
                log.warning("on_deactivate of %s took longer than %s s", self.grain_id, timeout)
        except Exception:
            log.exception("on_deactivate of %s raised", self.grain_id)
        finally:
            self.end_turn(EXCLUSIVE)
            self.state = DEAD
            self.runtime.forget(self)
            self._cancel_nursery()
            with trio.CancelScope(shield=True):
                if self._worker_done is not None:
                    await self._worker_done.wait()
                if self.directory_entry is not None:
                    await self.runtime.unregister(self)  # before its calls go to the next one
            self._redispatch_pending()

    def drop(self, error: Callable[[Call], Exception]) -> None:
        """The silo is gone: end this activation without ``on_deactivate`` and fail the
        calls that never started here with ``error(call)``."""
        self.state = DEAD
        self._cancel_nursery()
        for call in self._take_pending():
            call.fail(error(call))

    def _cancel_nursery(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._pending_spawns = None
        if self._lot is not None:
            self._lot.unpark_all()

    def _take_pending(self) -> list[Call]:
        """Empty the mailbox (and the call the task holds): calls that never started here."""
        pending = [self._held] if self._held is not None else []
        self._held = None
        while self._recv is not None:
            try:
                pending.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self.queued = 0
        return pending

    def _redispatch_pending(self) -> None:
        """Send calls that never started here to the grain's next activation."""
        for call in self._take_pending():
            if call.state != ABANDONED and call.method is not None:
                self.runtime.redispatch(self.grain_id, self.info, call)


_BASE_ON_ACTIVATE = Grain.on_activate
_BASE_ON_DEACTIVATE = Grain.on_deactivate
