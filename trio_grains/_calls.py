"""Calls in flight: the message a mailbox holds, the caller's wait, and response timeouts.

A caller whose call cannot run at once (the grain is busy) puts a :class:`Call` in the
activation's mailbox and parks its task with ``wait_task_rescheduled``; whoever runs the
turn reschedules it with the outcome. Cancelling the caller abandons the call: a queued
call is skipped, a running turn is cancelled.

Response timeouts do not cost a cancel scope per call: :class:`TimeoutWheel` keeps waiting
calls in the order they will expire and one task expires them.

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


class TimeoutWheel:
    """Expires calls whose reply did not come within *timeout* seconds.

    Every call waits for the same *timeout*, so the order calls are added in is the order
    they expire in: the wheel keeps them in one insertion-ordered dict, each with the
    *epoch* it was added in (no clock read per call: the epoch is the clock). While calls
    wait, :meth:`run` ticks on the multiples of ``timeout / 16`` (at most 1 s), starting
    a new epoch each time, and fails the calls at the front once *timeout* has passed
    since the epoch after theirs began (they came before it). So a call fails no earlier
    than *timeout* after it was added and, its deadline rounded up to a tick, at most one
    tick later (when the wheel runs on time).
    """

    def __init__(self, timeout: float, make_error: Callable[[Call, float], Exception]) -> None:
        self._timeout = timeout
        self._granularity = min(1.0, max(timeout / 16, 1e-3))
        self._calls: dict[Call, int] = {}  # waiting calls, oldest first -> their epoch
        self._epoch = 0
        #: when each epoch the waiting calls need began (from the oldest call's on)
        self._began: dict[int, float] = {}
        #: run() waits for a call (add() wakes it); never with ``timeout=inf``
        self._idle = math.isfinite(timeout)
        self._make_error = make_error
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, call: Call) -> None:
        if call.wheel is self:  # (again: it moves to the back, with the current epoch)
            del self._calls[call]
        self._calls[call] = self._epoch
        call.wheel = self
        if self._idle:
            self._idle = False
            self._lot.unpark_all()

    def discard(self, call: Call) -> None:
        call.wheel = None
        self._calls.pop(call, None)

    def pending(self) -> int:
        return len(self._calls)

    def fail_all(self, exc_factory: Callable[[Call], Exception]) -> None:
        """Wake every waiting caller with an error (used when the silo stops)."""
        calls, self._calls = list(self._calls), {}
        for call in calls:
            call.wheel = None
            call.fail(exc_factory(call))

    async def run(self) -> None:
        if not math.isfinite(self._timeout):
            await trio.sleep_forever()
        granularity = self._granularity
        while True:
            if not self._calls:
                self._idle = True
                self._began.clear()
                await self._lot.park()
                continue
            # The calls waiting now came before this epoch began.
            self._new_epoch(trio.current_time())
            while self._calls:
                await trio.sleep_until(
                    (math.floor(trio.current_time() / granularity) + 1) * granularity
                )
                now = trio.current_time()
                self._new_epoch(now)
                self._expire(now)

    def _new_epoch(self, now: float) -> None:
        self._epoch += 1
        self._began[self._epoch] = now

    def _expire(self, now: float) -> None:
        """Fail the calls at the front whose *timeout* has passed, and forget the start
        times of epochs no call needs any more."""
        began = self._began
        deadline = now - self._timeout
        expired = []
        for call, epoch in self._calls.items():
            if began[epoch + 1] > deadline:
                break
            expired.append(call)
        for call in expired:
            del self._calls[call]
            call.wheel = None
            call.fail(self._make_error(call, self._timeout))
        oldest = next(iter(self._calls.values()), self._epoch)
        for epoch in [e for e in began if e <= oldest]:
            del began[epoch]
