"""Calls in flight: the message a mailbox holds, the caller's wait, and response timeouts.

A caller whose call cannot run at once (the grain is busy) puts a :class:`Call` in the
activation's mailbox and parks its task with ``wait_task_rescheduled``; whoever runs the
turn reschedules it with the outcome. Cancelling the caller abandons the call: a queued
call is skipped, a running turn is cancelled.

Response timeouts do not cost a cancel scope per call: :class:`TimeoutWheel` keeps waiting
calls in buckets by deadline and one task expires whole buckets.

May import: values, ids, config, registries and placement. Not timers, which post calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ._methods import EXCLUSIVE, MethodInfo

__all__ = ["ABANDONED", "DONE", "RUNNING", "WAITING", "Call", "TimeoutWheel", "wait_reply"]

log = logging.getLogger("trio_grains.calls")

WAITING, RUNNING, DONE, ABANDONED = 0, 1, 2, 3


class Call:
    """One call (or timer tick) on its way to, or inside, an activation."""

    __slots__ = (
        "__weakref__",  # a silo finds the inbound call a CANCEL message names
        "args",
        "bucket",
        "deadline",
        "fn",
        "kind",
        "kwargs",
        "label",
        "method",
        "on_done",
        "result",
        "scope",
        "state",
        "target",
        "task",
        "trace",
        "wheel",
    )

    def __init__(
        self,
        method: MethodInfo | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        fn: Callable[..., Any] | None = None,
        label: str = "",
        target: object = None,
    ) -> None:
        self.method = method
        self.fn = fn  # for timer ticks: a callable taking no grain argument
        self.args = args
        self.kwargs = kwargs
        self.kind = EXCLUSIVE
        self.state = WAITING
        self.task: trio.lowlevel.Task | None = None
        self.scope: trio.CancelScope | None = None
        self.on_done: Callable[[outcome.Outcome[Any]], None] | None = None
        self.result: outcome.Outcome[Any] | None = None  # finished before anyone waited
        self.wheel: TimeoutWheel | None = None
        self.bucket = 0
        self.label = label
        self.target = target
        self.deadline = math.inf  # a remote caller's deadline, on this silo's clock
        self.trace: object = None  # with tracing on: the caller's trace context

    def describe(self) -> str:
        """``cart/bob65.add()`` (built only when a message needs it)."""
        if self.label:
            return self.label
        name = self.method.name if self.method is not None else "?"
        return f"{self.target}.{name}()"

    def finish(self, result: outcome.Outcome[Any]) -> None:
        """Deliver the outcome to whoever waits, unless the caller gave up."""
        if self.state == ABANDONED:
            return
        self.state = DONE
        if self.wheel is not None:
            self.wheel.discard(self)
        if self.task is not None:
            task, self.task = self.task, None
            trio.lowlevel.reschedule(task, result)
        elif self.on_done is not None:
            self.on_done(result)
        else:
            self.result = result  # e.g. a reply that came while the caller was sending

    def abandon(self) -> None:
        """The caller stopped waiting: skip the call, or cancel its running turn."""
        if self.state in (DONE, ABANDONED):
            return
        was_running = self.state == RUNNING
        self.state = ABANDONED
        self.task = None
        if self.wheel is not None:
            self.wheel.discard(self)
        if was_running and self.scope is not None:
            self.scope.cancel()

    def fail(self, exc: BaseException) -> None:
        """Wake the waiting caller with *exc* and abandon the call; nothing if the call
        already has its outcome or its caller gave up (there is nobody to tell: a reply
        to a cancelled remote caller would only be dropped and counted there)."""
        if self.state in (DONE, ABANDONED):
            return
        task = self.task
        self.abandon()
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(exc))
        elif self.on_done is not None:
            self.on_done(outcome.Error(exc))
        else:
            self.result = outcome.Error(exc)


async def wait_reply(call: Call) -> Any:
    """Park the current task until *call* is finished; cancellation abandons the call."""
    if call.result is not None:
        await trio.lowlevel.checkpoint()
        return call.result.unwrap()
    call.task = trio.lowlevel.current_task()

    def abort(_: Any) -> trio.lowlevel.Abort:
        call.abandon()
        return trio.lowlevel.Abort.SUCCEEDED

    return await trio.lowlevel.wait_task_rescheduled(abort)


def log_one_way_outcome(label: str) -> Callable[[outcome.Outcome[Any]], None]:
    def done(result: outcome.Outcome[Any]) -> None:
        if isinstance(result, outcome.Error):
            log.error("one-way call %s raised", label, exc_info=result.error)

    return done


_NEVER = -(2**62)  # the bucket of calls that never expire (timeout=inf)


class TimeoutWheel:
    """Expires calls whose reply did not come within *timeout* seconds.

    Deadlines are rounded up to buckets of ``timeout / 16`` (at most 1 s), so a timeout
    fires at most one bucket late; adding and removing a call is a set operation.
    """

    def __init__(self, timeout: float, make_error: Callable[[Call, float], Exception]) -> None:
        self._timeout = timeout
        self._granularity = min(1.0, max(timeout / 16, 1e-3))
        self._buckets: dict[int, set[Call]] = {}
        #: with ``timeout=inf``: calls that never expire (still failed by fail_all)
        self._unbounded: set[Call] | None = None if math.isfinite(timeout) else set()
        self._make_error = make_error
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, call: Call) -> None:
        if self._unbounded is not None:
            self._unbounded.add(call)
            call.bucket = _NEVER
            call.wheel = self
            return
        key = math.ceil((trio.current_time() + self._timeout) / self._granularity)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            self._lot.unpark_all()
        bucket.add(call)
        call.bucket = key
        call.wheel = self

    def discard(self, call: Call) -> None:
        call.wheel = None
        if call.bucket == _NEVER and self._unbounded is not None:
            self._unbounded.discard(call)
            return
        bucket = self._buckets.get(call.bucket)
        if bucket is not None:
            bucket.discard(call)
            if not bucket:
                del self._buckets[call.bucket]

    def pending(self) -> int:
        unbounded = 0 if self._unbounded is None else len(self._unbounded)
        return unbounded + sum(len(b) for b in self._buckets.values())

    def fail_all(self, exc_factory: Callable[[Call], Exception]) -> None:
        """Wake every waiting caller with an error (used when the silo stops)."""
        buckets, self._buckets = list(self._buckets.values()), {}
        if self._unbounded:
            buckets.append(self._unbounded)
            self._unbounded = set()
        for bucket in buckets:
            for call in list(bucket):
                call.wheel = None
                call.fail(exc_factory(call))

    async def run(self) -> None:
        while True:
            if not self._buckets:
                await self._lot.park()
                continue
            first = min(self._buckets)
            deadline = first * self._granularity
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            for call in list(self._buckets.pop(first, ())):
                call.wheel = None
                call.fail(self._make_error(call, self._timeout))
