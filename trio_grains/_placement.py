"""Placement: which silo a new activation goes to.

A grain class declares a *strategy*, a frozen value (``@placement(RandomPlacement())``); a
*director* registered for that strategy's name picks the silo. Directors are registered by
plugins through ``grains_register_placement``, the built-in ones included.

Directors are sync and pure with respect to the cluster: they are handed a snapshot of the
compatible silos and return one of them. Membership, the grain directory and the race for a
single activation are the caller's business.

May import: values, ids, config and the registries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import attrs

from ._exceptions import ConfigError, PluginError, SiloUnavailableError
from ._ids import GrainId  # at run time: attrs resolves the annotations that name it
from ._registry import UNATTRIBUTED, ProviderRegistry

__all__ = [
    "ActivationCountPlacement",
    "HashBasedPlacement",
    "PlacementDirector",
    "PlacementRegistry",
    "PlacementStrategy",
    "PlacementTarget",
    "PreferLocalPlacement",
    "RandomPlacement",
    "SiloInfo",
    "SiloRolePlacement",
    "placement",
    "placement_of",
]

T = TypeVar("T", bound=type)


# --- values ----------------------------------------------------------------------------


@attrs.frozen
class PlacementStrategy:
    """Base of placement strategies: frozen values naming a director.

    A subclass sets the class-level ``name`` its director is registered under and holds
    the strategy's parameters as attrs fields::

        @attrs.frozen
        class NearDataPlacement(PlacementStrategy):
            name: ClassVar[str] = "near-data"
            region: str
    """

    name: ClassVar[str]


@attrs.frozen
class RandomPlacement(PlacementStrategy):
    """Any compatible silo, chosen at random (Orleans' default)."""

    name: ClassVar[str] = "random"


@attrs.frozen
class PreferLocalPlacement(PlacementStrategy):
    """The calling silo if it can host the grain, else a random one."""

    name: ClassVar[str] = "prefer-local"


@attrs.frozen
class HashBasedPlacement(PlacementStrategy):
    """A silo chosen by a stable hash of the grain id over the silos sorted by name.

    The same id maps to the same silo in every process while membership is unchanged.
    """

    name: ClassVar[str] = "hash-based"


def _check_choices(_inst: object, _attr: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"ActivationCountPlacement(choices=...) must be an int >= 1, got {value!r}"
        )


@attrs.frozen
class ActivationCountPlacement(PlacementStrategy):
    """The least loaded of ``choices`` silos sampled at random ("power of two choices")."""

    name: ClassVar[str] = "activation-count"
    choices: int = attrs.field(default=2, validator=_check_choices)


def _check_role(_inst: object, _attr: object, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"SiloRolePlacement(role=...) must be a non-empty str, got {value!r}")


@attrs.frozen
class SiloRolePlacement(PlacementStrategy):
    """A random silo among those that have ``role``."""

    name: ClassVar[str] = "silo-role"
    role: str = attrs.field(validator=_check_role)


@attrs.frozen
class SiloInfo:
    """What a director knows about a candidate silo."""

    name: str
    roles: frozenset[str] = frozenset()
    activation_count: int = 0
    is_local: bool = False


@attrs.frozen
class PlacementTarget:
    """The activation being placed."""

    grain_id: GrainId


# --- directors -------------------------------------------------------------------------


class PlacementDirector(ABC):
    """Picks the silo for a new activation. Register one per strategy name.

    Implementations must be sync, must not block, and must return one of ``silos`` (which
    is never empty when called through :meth:`PlacementRegistry.choose_silo`). Raise
    :class:`~trio_grains.SiloUnavailableError` when no silo in ``silos`` fits the strategy.
    """

    @abstractmethod
    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        """Return the silo among *silos* where *target* should be activated."""


class PlacementRegistry(ProviderRegistry[PlacementDirector]):
    """Strategy names -> directors, filled by ``grains_register_placement`` hooks."""

    def __init__(self) -> None:
        super().__init__("placement strategy")
        self._strategy_types: dict[str, type[PlacementStrategy]] = {}

    def register(
        self,
        name: str,
        director: PlacementDirector,
        strategy_type: type[PlacementStrategy] | None = None,
    ) -> None:
        """Use *director* for strategies whose ``name`` is *name*.

        Pass *strategy_type* to let the strategy be chosen by name alone (e.g.
        ``default_placement = "random"`` in the configuration); its ``name`` must be *name*.
        """
        plugin = self._current_plugin or UNATTRIBUTED
        if strategy_type is not None and not (
            isinstance(strategy_type, type)
            and issubclass(strategy_type, PlacementStrategy)
            and getattr(strategy_type, "name", None) == name
        ):
            raise PluginError(
                f"plugin {plugin!r} registered placement strategy {name!r} with strategy type "
                f"{strategy_type!r}; pass a PlacementStrategy subclass whose name is {name!r}"
            )
        super().register(name, director)
        if strategy_type is not None:
            self._strategy_types[name] = strategy_type

    def _check_entry(self, name: str, factory: PlacementDirector, plugin: str) -> None:
        if not isinstance(factory, PlacementDirector):
            raise PluginError(
                f"plugin {plugin!r} registered placement strategy {name!r} with {factory!r}; "
                "register an instance of a trio_grains.PlacementDirector subclass"
            )

    def director_for(self, strategy: PlacementStrategy) -> PlacementDirector:
        """The director registered under ``strategy.name``."""
        director = self.get(strategy.name)
        expected = self._strategy_types.get(strategy.name)
        if expected is not None and not isinstance(strategy, expected):
            raise PluginError(
                f"placement strategy {strategy!r} uses the name {strategy.name!r}, which "
                f"plugin {self.plugin_of(strategy.name)!r} registered for "
                f"{expected.__qualname__}; give {type(strategy).__qualname__} its own name"
            )
        return director

    def strategy_type(self, name: str) -> type[PlacementStrategy] | None:
        """The strategy class registered with *name*, if its plugin gave one."""
        self.get(name)  # unknown names are an error
        return self._strategy_types.get(name)

    def strategy_for_name(self, name: str) -> PlacementStrategy:
        """A strategy instance from its name alone, e.g. for ``default_placement``.

        Raises :class:`~trio_grains.ConfigError` if the strategy needs parameters.
        """
        strategy_type = self.strategy_type(name)
        if strategy_type is None:
            raise ConfigError(
                f"placement strategy {name!r} cannot be chosen by name alone (its plugin "
                "registered no strategy type); declare it on the grain class with @placement"
            )
        try:
            return strategy_type()
        except TypeError:
            raise ConfigError(
                f"placement strategy {name!r} needs parameters (e.g. "
                f"{strategy_type.__qualname__}(...)); declare it on the grain class with "
                "@placement instead of naming it in the configuration"
            ) from None

    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        """Ask the director for *strategy* to place *target* on one of *silos*."""
        if not silos:
            raise SiloUnavailableError(
                f"no silo is available to place {target.grain_id}; is the silo running?"
            )
        return self.director_for(strategy).choose_silo(strategy, target, silos)


# --- the class decorator ---------------------------------------------------------------


def placement(strategy: PlacementStrategy) -> Callable[[T], T]:
    """Declare the placement strategy of a grain class::

    @placement(PreferLocalPlacement())
    class CartGrain(Grain): ...
    """
    if not isinstance(strategy, PlacementStrategy):
        if isinstance(strategy, type) and issubclass(strategy, PlacementStrategy):
            args = "..." if attrs.fields(strategy) else ""
            hint = f"{strategy.__qualname__}({args}) (an instance, not the class)"
        else:
            hint = "RandomPlacement()"
        raise TypeError(
            f"@placement() takes a placement strategy instance such as {hint}, got {strategy!r}"
        )

    def decorate(cls: T) -> T:
        if not isinstance(cls, type):
            raise TypeError(f"@placement(...) decorates a grain class, got {cls!r}")
        cls.__grain_placement__ = strategy  # type: ignore[attr-defined]
        return cls

    return decorate


def placement_of(cls: type) -> PlacementStrategy | None:
    """The strategy declared with :func:`placement` on *cls* or a base class, if any."""
    strategy = getattr(cls, "__grain_placement__", None)
    return strategy if isinstance(strategy, PlacementStrategy) else None
