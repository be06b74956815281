"""Built-in plugin ``trio_grains.builtin.placement``: the standard placement directors.

Registered through ``grains_register_placement`` like any third-party plugin, and marked
essential: blocking it is an error, since every silo needs somewhere to put a grain.

In a single silo every director chooses that silo (it is the only candidate); the
choices matter once there is a cluster.

May import: layers 0-7 (the contracts it implements) and ``hookspecs``. Not the plugin
manager, the silo or the client: a built-in is an ordinary plugin.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import TypeVar

import attrs

from .._exceptions import SiloUnavailableError
from .._placement import (
    ActivationCountPlacement,
    HashBasedPlacement,
    PlacementDirector,
    PlacementRegistry,
    PlacementStrategy,
    PlacementTarget,
    PreferLocalPlacement,
    RandomPlacement,
    SiloInfo,
    SiloRolePlacement,
)
from ..hookspecs import hookimpl

__all__ = [
    "ActivationCountDirector",
    "HashBasedDirector",
    "PreferLocalDirector",
    "RandomDirector",
    "SiloRoleDirector",
    "grains_register_placement",
]

S = TypeVar("S", bound=PlacementStrategy)


def _expect(strategy: PlacementStrategy, strategy_type: type[S]) -> S:
    if not isinstance(strategy, strategy_type):
        raise TypeError(
            f"this director places {strategy_type.__qualname__} strategies, got {strategy!r}"
        )
    return strategy


@attrs.define(eq=False)
class RandomDirector(PlacementDirector):
    """Any silo, uniformly at random (from a :class:`random.Random` of its own)."""

    _random: random.Random = attrs.field(factory=random.Random)

    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        return self._random.choice(silos)


@attrs.define(eq=False)
class PreferLocalDirector(PlacementDirector):
    """The local silo when it is a candidate, else a random one."""

    _random: random.Random = attrs.field(factory=random.Random)

    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        for silo in silos:
            if silo.is_local:
                return silo
        return self._random.choice(silos)


@attrs.define(eq=False)
class HashBasedDirector(PlacementDirector):
    """``crc32(str(grain_id))`` modulo the number of silos, over the silos sorted by name.

    Not Python's ``hash()``, which is salted per process: every silo must agree.
    """

    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        ordered = sorted(silos, key=lambda silo: silo.name)
        digest = zlib.crc32(str(target.grain_id).encode("utf-8"))
        return ordered[digest % len(ordered)]


@attrs.define(eq=False)
class ActivationCountDirector(PlacementDirector):
    """Samples ``strategy.choices`` silos and takes the one with fewest activations.

    Ties go to the local silo, then to the first one sampled.
    """

    _random: random.Random = attrs.field(factory=random.Random)

    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        choices = _expect(strategy, ActivationCountPlacement).choices
        sampled = list(silos) if choices >= len(silos) else self._random.sample(silos, choices)
        return min(sampled, key=lambda silo: (silo.activation_count, not silo.is_local))


@attrs.define(eq=False)
class SiloRoleDirector(PlacementDirector):
    """A random silo among those that have ``strategy.role``."""

    _random: random.Random = attrs.field(factory=random.Random)

    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        role = _expect(strategy, SiloRolePlacement).role
        candidates = [silo for silo in silos if role in silo.roles]
        if not candidates:
            names = ", ".join(sorted(silo.name for silo in silos))
            raise SiloUnavailableError(
                f"cannot place {target.grain_id}: no silo has the role {role!r} "
                f"(silos: {names}); start a silo with that role or change the grain's "
                "@placement"
            )
        return self._random.choice(candidates)


@hookimpl
def grains_register_placement(registry: PlacementRegistry) -> None:
    """Register the five built-in directors, each with its strategy type."""
    registry.register(RandomPlacement.name, RandomDirector(), RandomPlacement)
    registry.register(PreferLocalPlacement.name, PreferLocalDirector(), PreferLocalPlacement)
    registry.register(HashBasedPlacement.name, HashBasedDirector(), HashBasedPlacement)
    registry.register(
        ActivationCountPlacement.name, ActivationCountDirector(), ActivationCountPlacement
    )
    registry.register(SiloRolePlacement.name, SiloRoleDirector(), SiloRolePlacement)
