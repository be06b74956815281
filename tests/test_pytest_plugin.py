"""The pytest plugin (``trio_grains.testing.pytest_plugin``), run as a user runs it.

Each test writes a user's test module into a fresh directory and runs pytest on it in a
subprocess (``pytester``), with the plugins loaded from their entry points as in any
project that installs trio-grains.
"""

from __future__ import annotations

import pytest

CONFIG = """
[tool.pytest.ini_options]
trio_mode = true
filterwarnings = ["error"]
"""

GRAINS = """
import pytest
from trio_grains import Grain, SiloConfig


class CartGrain(Grain):
    def __init__(self) -> None:
        self.items: list[str] = []

    async def add(self, item: str) -> list[str]:
        self.items.append(item)
        return self.items


class OtherGrain(Grain):
    async def ping(self) -> str:
        return "pong"
"""


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyprojecttoml(CONFIG)
    pytester.makepyfile(test_user=GRAINS + source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def test_silo_cluster_and_client_fixtures(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
pytestmark = pytest.mark.grains([CartGrain])


async def test_silo(grains_silo):
    cart = grains_silo.get_grain(CartGrain, "alice")
    await cart.add("socks")
    assert await cart.add("tea") == ["socks", "tea"]
    assert grains_silo.cluster is None  # a silo alone


@pytest.mark.grains([OtherGrain])
async def test_markers_add_up(grains_silo, grains_classes):
    assert grains_classes == (OtherGrain, CartGrain)
    assert await grains_silo.get_grain(OtherGrain, 1).ping() == "pong"


async def test_each_test_has_a_fresh_silo(grains_silo):
    assert await grains_silo.get_grain(CartGrain, "alice").add("tea") == ["tea"]


async def test_cluster_of_two_by_default(grains_cluster, grains_client):
    assert len(grains_cluster.silos) == 2
    assert grains_client is grains_cluster.client
    for i in range(40):
        await grains_client.get_grain(CartGrain, f"c{i}").add("x")
    activations = [silo.statistics().activations for silo in grains_cluster.silos]
    assert sum(activations) == 40
    assert 0 not in activations  # spread over both silos


@pytest.mark.grains(silos=3)
async def test_cluster_size_from_the_marker(grains_cluster):
    assert len(grains_cluster.silos) == 3
    assert await grains_cluster.get_grain(CartGrain, "bob").add("x") == ["x"]
""",
    )
    result.assert_outcomes(passed=5)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            '["CartGrain"]',
            "*@pytest.mark.grains takes a list of grain classes; *test_bad gives 'CartGrain' "
            "(str). Pass the classes themselves, e.g. @pytest.mark.grains([[]CartGrain[]])*",
        ),
        ("CartGrain, 3", "*@pytest.mark.grains takes a list of grain classes; *gives 3 (int)*"),
        (
            "[CartGrain], silos=0",
            "*@pytest.mark.grains(silos=...) must be a whole number of silos, at least 1; "
            "*test_bad gives 0",
        ),
        ("[CartGrain], silos='3'", "*must be a whole number of silos*gives '3'"),
        (
            "[CartGrain], size=3",
            "*@pytest.mark.grains got unknown keyword argument(s) size on *test_bad; "
            "it takes a list of grain classes and silos=N",
        ),
    ],
)
def test_a_bad_marker_argument_is_a_clear_error(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    result = run(
        pytester,
        f"""
@pytest.mark.grains({marker})
async def test_bad(grains_cluster):
    pass
""",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])
    # the message is the whole report: no traceback into the plugin
    result.stdout.no_fnmatch_line("*pytest_plugin.py*")


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(CONFIG)
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.grains([[]GrainClass, ...[]], silos=N)*"])


def test_config_classes_and_size_are_overridable_fixtures(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.fixture
def grains_silo_config():
    return SiloConfig(name="custom", cluster_id="mine")


@pytest.fixture
def grains_classes():
    return [CartGrain]


@pytest.fixture
def grains_cluster_size():
    return 1


async def test_silo_config(grains_silo):
    assert grains_silo.statistics().name == "custom"
    cart = grains_silo.get_grain(CartGrain, "x")
    assert await cart.add("b") == ["b"]


async def test_cluster_config(grains_cluster):
    assert [silo.config.cluster_id for silo in grains_cluster.silos] == ["mine"]
    assert [silo.config.name for silo in grains_cluster.silos] == ["silo-0"]
    assert await grains_cluster.get_grain(CartGrain, "y").add("c") == ["c"]
""",
    )
    result.assert_outcomes(passed=2)


def test_plugins_fixture_reaches_the_silo(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
from trio_grains import hookimpl


class GreeterPlugin:
    @hookimpl
    def grains_register_grain_classes(self, registry):
        registry.register(OtherGrain)


@pytest.fixture
def grains_plugins():
    return [GreeterPlugin()]


async def test_plugin_grain(grains_silo):
    assert await grains_silo.get_grain(OtherGrain, 0).ping() == "pong"
""",
    )
    result.assert_outcomes(passed=1)


def test_a_test_outside_pytest_trio_is_told_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\n")  # no trio_mode
    pytester.makepyfile(
        test_user=GRAINS
        + """
def test_sync(grains_silo):
    pass


@pytest.mark.trio
@pytest.mark.grains([OtherGrain])
async def test_marked(grains_silo):
    assert await grains_silo.get_grain(OtherGrain, 0).ping() == "pong"
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_sync does not run under pytest-trio: the grains_* silo and cluster "
            "fixtures are Trio fixtures: install pytest-trio and set `trio_mode = true`*"
        ]
    )


def test_without_pytest_trio_the_error_names_it(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\n")
    pytester.makepyfile(
        test_user=GRAINS
        + """
def test_sync(grains_silo):
    pass
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pytest-trio is not installed or is disabled: *"])


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(CONFIG)
    pytester.makepyfile(test_user="def test_x(grains_silo):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trio_grains")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'grains_silo' not found*"])
