"""Grain methods as the runtime sees them: :class:`MethodInfo` and the turn kinds.

The bottom of the call machinery: grain classes (``_grain``) build method tables of
these, calls in flight (``_calls``) carry them, activations run them by kind.

May import: nothing of trio-grains.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

__all__ = ["EXCLUSIVE", "INTERLEAVE", "NEVER_STOLEN", "READ_ONLY", "MethodInfo"]

# How a call may interleave with the turns already running on its activation.
EXCLUSIVE, READ_ONLY, INTERLEAVE = 0, 1, 2
#: the steal kind of a method whose calls never run in the caller's task
NEVER_STOLEN = -1


@attrs.frozen(eq=False)
class MethodInfo:
    """One callable grain method, as seen by callers and by the runtime."""

    name: str
    func: Callable[..., Awaitable[Any]]
    always_interleave: bool = False
    read_only: bool = False
    one_way: bool = False
    idempotent: bool = False
    #: how calls interleave on the implementing class (``EXCLUSIVE`` ...)
    kind: int = 0
    #: what the in-task fast path runs (``Dispatcher.invoke``: an idle local grain, in the
    #: caller's task); ``func`` runs every other turn. A silo's method table may wrap
    #: ``func`` alone (a span per turn, ``_tracing``) or count calls here instead
    #: (``_metrics``: ``counter`` set, ``func`` the counting wrapper, ``inline`` not)
    inline: Callable[..., Awaitable[Any]] = attrs.field(
        default=attrs.Factory(lambda self: self.func, takes_self=True)
    )
    counter: Any = None
    #: the kind a call takes when it runs in the caller's task ("turn stealing"): its
    #: ``kind``, or :data:`NEVER_STOLEN` for one-way methods (and, in a silo that isolates
    #: local calls, for every method), which the turn rule never lets start that way
    steal_kind: int = attrs.field(
        default=attrs.Factory(
            lambda self: NEVER_STOLEN if self.one_way else self.kind, takes_self=True
        )
    )
