"""Grain timers: ticks delivered as turns through the activation's mailbox.

A timer is a task in the activation's nursery that sleeps, posts a tick (a ``Call`` with
no caller) to the mailbox, waits for that turn to finish, then sleeps the period: ticks
never overlap, die with the activation, and an exception is logged while the timer goes
on. ``keep_alive=False`` ticks do not count as activity for idle collection.

May import: values, ids, config, registries, placement and calls. Not activations: a
timer's activation is handed in as a :class:`TimerHost`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import outcome
import trio

from ._calls import RUNNING, Call
from ._methods import EXCLUSIVE, INTERLEAVE

if TYPE_CHECKING:
    from ._ids import GrainId

__all__ = ["GrainTimer", "TimerHost", "start_timer"]

log = logging.getLogger("trio_grains.activation")


@attrs.define(eq=False)
class GrainTimer:
    """Handle of a grain timer: ``cancel()`` stops it."""

    name: str
    _cancelled: bool = attrs.field(default=False, init=False)
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _pending: Call | None = attrs.field(default=None, init=False)

    def cancel(self) -> None:
        """Stop the timer; a tick waiting for its turn is dropped, a running one finishes."""
        self._cancelled = True
        if self._pending is not None and self._pending.state != RUNNING:
            self._pending.abandon()
        if self._scope is not None:
            self._scope.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class TimerHost(Protocol):
    """What a timer needs of its activation (an :class:`~trio_grains._activation.Activation`)."""

    grain_id: GrainId
    touched: bool  # counts as activity for idle collection

    @property
    def is_active(self) -> bool: ...

    def post(self, call: Call) -> None: ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...


def start_timer(
    act: TimerHost,
    callback: Callable[[], Awaitable[Any]],
    *,
    due: float,
    period: float,
    interleave: bool,
    keep_alive: bool,
    name: str | None,
) -> GrainTimer:
    if due < 0 or not period > 0:
        raise ValueError(f"timer needs due >= 0 and period > 0, got due={due}, period={period}")
    timer = GrainTimer(name or str(getattr(callback, "__qualname__", "timer")))
    act.start_soon(_run_timer, act, timer, callback, due, period, interleave, keep_alive)
    return timer


async def _run_timer(
    act: TimerHost,
    timer: GrainTimer,
    callback: Callable[[], Awaitable[Any]],
    due: float,
    period: float,
    interleave: bool,
    keep_alive: bool,
) -> None:
    with trio.CancelScope() as scope:
        timer._scope = scope
        if timer.cancelled:
            return
        await trio.sleep(due)
        while not timer.cancelled and act.is_active:
            done = trio.Event()
            result: list[outcome.Outcome[Any]] = []

            def on_done(
                res: outcome.Outcome[Any],
                _d: trio.Event = done,
                _r: list[outcome.Outcome[Any]] = result,
            ) -> None:
                _r.append(res)
                _d.set()

            tick = Call(None, (), {}, fn=callback, label=f"{act.grain_id} timer {timer.name}")
            tick.kind = INTERLEAVE if interleave else EXCLUSIVE
            tick.on_done = on_done
            touched = act.touched
            timer._pending = tick
            act.post(tick)
            await done.wait()  # cancel() drops the tick if it has not started yet
            timer._pending = None
            if not keep_alive:
                act.touched = touched
            if result and isinstance(result[0], outcome.Error):
                log.error(
                    "timer %r of %s raised; the timer goes on",
                    timer.name,
                    act.grain_id,
                    exc_info=result[0].error,
                )
            if period == math.inf:
                break
            await trio.sleep(period)
