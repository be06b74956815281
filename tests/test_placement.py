"""Placement strategies, the built-in directors, and the placement registry."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

import attrs
import pytest

from trio_grains._builtin.placement import (
    ActivationCountDirector,
    HashBasedDirector,
    PreferLocalDirector,
    RandomDirector,
    SiloRoleDirector,
)
from trio_grains._config import PluginsConfig
from trio_grains._exceptions import ConfigError, PluginError, SiloUnavailableError
from trio_grains._ids import GrainId
from trio_grains._placement import (
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
    placement,
    placement_of,
)
from trio_grains._plugins import load_plugins
from trio_grains.hookspecs import hookimpl

A = SiloInfo("silo-a", roles=frozenset({"web"}), activation_count=40)
B = SiloInfo("silo-b", roles=frozenset({"gpu"}), activation_count=7)
C = SiloInfo("silo-c", roles=frozenset({"gpu", "web"}), activation_count=12, is_local=True)
D = SiloInfo("silo-d", activation_count=30)
SILOS = (A, B, C, D)


def target(text: str = "cart/bob") -> PlacementTarget:
    return PlacementTarget(GrainId.parse(text))


@pytest.fixture
def registry() -> PlacementRegistry:
    return load_plugins(PluginsConfig(load_entry_points=False)).placement


# --- strategies ------------------------------------------------------------------------


def test_strategies_are_frozen_values_with_names() -> None:
    assert [s.name for s in (RandomPlacement, PreferLocalPlacement, HashBasedPlacement)] == [
        "random",
        "prefer-local",
        "hash-based",
    ]
    assert ActivationCountPlacement.name == "activation-count"
    assert SiloRolePlacement.name == "silo-role"
    assert ActivationCountPlacement() == ActivationCountPlacement(choices=2)
    assert SiloRolePlacement("gpu") != SiloRolePlacement("web")
    assert hash(SiloRolePlacement("gpu")) == hash(SiloRolePlacement("gpu"))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        SiloRolePlacement("gpu").role = "web"  # type: ignore[misc]


@pytest.mark.parametrize("choices", [0, -1, True, 1.5])
def test_activation_count_choices_must_be_a_positive_int(choices: object) -> None:
    with pytest.raises(ConfigError, match="choices"):
        ActivationCountPlacement(choices)  # type: ignore[arg-type]


def test_silo_role_needs_a_role() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        SiloRolePlacement("")


def test_placement_decorator_sets_the_strategy() -> None:
    @placement(SiloRolePlacement("gpu"))
    class RenderGrain:
        pass

    class SubGrain(RenderGrain):
        pass

    assert RenderGrain.__grain_placement__ == SiloRolePlacement("gpu")  # type: ignore[attr-defined]
    assert placement_of(SubGrain) == SiloRolePlacement("gpu")
    assert placement_of(int) is None


def test_placement_decorator_rejects_non_strategies() -> None:
    with pytest.raises(TypeError, match=r"such as RandomPlacement\(\) \(an instance"):
        placement(RandomPlacement)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"such as SiloRolePlacement\(\.\.\.\)"):
        placement(SiloRolePlacement)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"such as RandomPlacement\(\), got 'random'"):
        placement("random")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates a grain class"):
        placement(RandomPlacement())(len)  # type: ignore[type-var]


# --- the built-in directors ------------------------------------------------------------


def test_random_picks_every_silo_and_only_given_ones() -> None:
    director = RandomDirector(random.Random(1))
    picks = {director.choose_silo(RandomPlacement(), target(), SILOS) for _ in range(200)}
    assert picks == set(SILOS)


def test_random_directors_own_their_random() -> None:
    first = RandomDirector(random.Random(7))
    second = RandomDirector(random.Random(7))
    random.seed(0)  # the global generator plays no part
    a = [first.choose_silo(RandomPlacement(), target(), SILOS) for _ in range(20)]
    b = [second.choose_silo(RandomPlacement(), target(), SILOS) for _ in range(20)]
    assert a == b


def test_prefer_local_picks_the_local_silo() -> None:
    director = PreferLocalDirector()
    for _ in range(20):
        assert director.choose_silo(PreferLocalPlacement(), target(), SILOS) is C


def test_prefer_local_without_a_local_silo_picks_any() -> None:
    director = PreferLocalDirector(random.Random(3))
    remote = (A, B, D)
    picks = {director.choose_silo(PreferLocalPlacement(), target(), remote) for _ in range(100)}
    assert picks == set(remote)


@pytest.mark.parametrize(
    ("grain_id", "of_four", "of_three"),
    [("cart/bob", D, C), ("cart/alice", C, B), ("orderprocessor/2A", C, A)],
)
def test_hash_based_is_stable_and_process_independent(
    grain_id: str, of_four: SiloInfo, of_three: SiloInfo
) -> None:
    # Fixed expectations: crc32 of the id text, over the silos sorted by name. Python's
    # hash() would differ between processes and fail this.
    director = HashBasedDirector()
    strategy = HashBasedPlacement()
    assert director.choose_silo(strategy, target(grain_id), SILOS) == of_four
    assert director.choose_silo(strategy, target(grain_id), SILOS[::-1]) == of_four
    assert director.choose_silo(strategy, target(grain_id), (C, A, B)) == of_three


def test_activation_count_picks_the_least_loaded_of_all() -> None:
    director = ActivationCountDirector()
    strategy = ActivationCountPlacement(choices=len(SILOS))
    for _ in range(20):
        assert director.choose_silo(strategy, target(), SILOS) is B


def test_activation_count_prefers_local_on_a_tie() -> None:
    local = attrs.evolve(C, activation_count=B.activation_count)
    director = ActivationCountDirector()
    strategy = ActivationCountPlacement(choices=10)
    assert director.choose_silo(strategy, target(), (A, B, local, D)) is local


def test_activation_count_samples_choices_silos() -> None:
    director = ActivationCountDirector(random.Random(5))
    strategy = ActivationCountPlacement(choices=1)
    picks = {director.choose_silo(strategy, target(), SILOS) for _ in range(200)}
    assert picks == set(SILOS)  # one random silo: anything goes
    strategy = ActivationCountPlacement(choices=3)
    picks = {director.choose_silo(strategy, target(), SILOS) for _ in range(200)}
    assert A not in picks  # the most loaded silo never wins a sample of three
    assert B in picks


def test_silo_role_only_picks_silos_with_the_role() -> None:
    director = SiloRoleDirector(random.Random(2))
    picks = {director.choose_silo(SiloRolePlacement("gpu"), target(), SILOS) for _ in range(100)}
    assert picks == {B, C}


def test_silo_role_without_a_matching_silo_says_so() -> None:
    with pytest.raises(SiloUnavailableError) as info:
        SiloRoleDirector().choose_silo(SiloRolePlacement("tpu"), target(), SILOS)
    message = str(info.value)
    assert "cannot place cart/bob: no silo has the role 'tpu'" in message
    assert "silo-a, silo-b, silo-c, silo-d" in message
    assert "start a silo with that role" in message


def test_a_director_rejects_a_foreign_strategy() -> None:
    with pytest.raises(TypeError, match="places SiloRolePlacement strategies"):
        SiloRoleDirector().choose_silo(RandomPlacement(), target(), SILOS)


@pytest.mark.parametrize(
    "strategy",
    [
        RandomPlacement(),
        PreferLocalPlacement(),
        HashBasedPlacement(),
        ActivationCountPlacement(),
        SiloRolePlacement("web"),
    ],
)
def test_a_single_silo_is_always_chosen(
    registry: PlacementRegistry, strategy: PlacementStrategy
) -> None:
    only = SiloInfo("only", roles=frozenset({"web"}), is_local=True)
    for key in ("a", "b", "c"):
        assert registry.choose_silo(strategy, target(f"cart/{key}"), [only]) is only


# --- the registry ----------------------------------------------------------------------


def test_registry_finds_directors_by_strategy_name(registry: PlacementRegistry) -> None:
    assert isinstance(registry.director_for(HashBasedPlacement()), HashBasedDirector)
    assert isinstance(registry.director_for(SiloRolePlacement("x")), SiloRoleDirector)
    assert registry.strategy_type("activation-count") is ActivationCountPlacement
    assert registry.choose_silo(PreferLocalPlacement(), target(), SILOS) is C


def test_no_silo_at_all_is_unavailable(registry: PlacementRegistry) -> None:
    with pytest.raises(SiloUnavailableError, match="no silo is available to place cart/bob"):
        registry.choose_silo(RandomPlacement(), target(), [])


@attrs.frozen
class NearDataPlacement(PlacementStrategy):
    name: ClassVar[str] = "near-data"
    region: str


class NearDataDirector(PlacementDirector):
    def choose_silo(
        self, strategy: PlacementStrategy, target: PlacementTarget, silos: Sequence[SiloInfo]
    ) -> SiloInfo:
        assert isinstance(strategy, NearDataPlacement)
        return next(silo for silo in silos if strategy.region in silo.roles)


class NearDataPlugin:
    @hookimpl
    def grains_register_placement(self, registry: PlacementRegistry) -> None:
        registry.register("near-data", NearDataDirector(), NearDataPlacement)


def test_a_plugin_adds_a_strategy() -> None:
    near_data = NearDataPlugin()
    plugins = load_plugins(PluginsConfig(load_entry_points=False), extra=[near_data])
    chosen = plugins.placement.choose_silo(NearDataPlacement("gpu"), target(), SILOS)
    assert chosen is B
    assert plugins.placement.plugin_of("near-data") == plugins.manager.get_name(near_data)


def test_register_checks_director_and_strategy_type() -> None:
    registry = PlacementRegistry()
    with registry.registering_for("acme"):
        with pytest.raises(PluginError, match=r"'acme'.*PlacementDirector subclass"):
            registry.register("near-data", object())  # type: ignore[arg-type]
        with pytest.raises(PluginError, match="whose name is 'far-data'"):
            registry.register("far-data", NearDataDirector(), NearDataPlacement)
    assert registry.names() == []


def test_a_strategy_name_claimed_by_another_type_is_an_error() -> None:
    @attrs.frozen
    class Impostor(PlacementStrategy):
        name: ClassVar[str] = "random"

    registry = load_plugins(PluginsConfig(load_entry_points=False)).placement
    with pytest.raises(PluginError, match=r"registered for RandomPlacement; give .*Impostor"):
        registry.director_for(Impostor())
