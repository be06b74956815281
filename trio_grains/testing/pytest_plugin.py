"""The pytest plugin of trio-grains: fixtures for a silo and an in-process test cluster.

pytest loads it through the ``pytest11`` entry point whenever trio-grains is installed
(``-p no:trio_grains`` turns it off). Every fixture is named ``grains_*``, so that it does
not collide with an application's own::

    import pytest

    @pytest.mark.grains([CartGrain])
    async def test_cart(grains_silo):
        cart = grains_silo.get_grain(CartGrain, "alice")
        assert await cart.add("socks") == ["socks"]

The fixtures, each function-scoped (a Trio fixture lives in its test's ``trio.run``):

* ``grains_silo``: a running :class:`~trio_grains.Silo`;
* ``grains_cluster``: a running :class:`~trio_grains.testing.TestCluster` (in memory);
* ``grains_client``: that cluster's client;

and the fixtures they are built from, which a test module or a ``conftest.py`` overrides
by defining a fixture of the same name:

* ``grains_classes``: the grain classes to host (default: those of the ``grains`` marker);
* ``grains_silo_config``: the :class:`~trio_grains.SiloConfig` of the silo, and the
  template of the cluster's silos (default: ``SiloConfig(remote_tracebacks=True)``);
* ``grains_cluster_size``: how many silos ``grains_cluster`` starts (default: the
  marker's ``silos=``, else 2);
* ``grains_plugins``: extra plugin objects for ``open_silo(plugins=...)`` (default none).

The silo and cluster fixtures are ``async`` and need pytest-trio, with ``trio_mode = true``
in the pytest configuration (or ``@pytest.mark.trio`` on each test); a test that uses them
without it fails with a message saying so, instead of pytest's "coroutine was never
awaited". docs/testing.md is the user's guide.

The marker takes a *list* of classes: pytest reads ``@pytest.mark.grains(CartGrain)``, one
class and nothing else, as the marker decorating ``CartGrain`` itself. Marker errors (a
string where a class belongs, ``silos=0``) fail the test at setup with a
message naming the fix, not a traceback from inside the silo.

May import: every layer below, the ``trio_grains`` package and ``trio_grains.testing``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from trio_grains import Client, Silo, SiloConfig, open_silo
from trio_grains.testing import TestCluster, open_test_cluster

__all__ = [
    "grains_classes",
    "grains_client",
    "grains_cluster",
    "grains_cluster_size",
    "grains_plugins",
    "grains_silo",
    "grains_silo_config",
    "require_trio",
]

DEFAULT_CLUSTER_SIZE = 2
_MARKER_HELP = (
    "grains([GrainClass, ...], silos=N): the grain classes the grains_silo and grains_cluster "
    "fixtures host, and how many silos grains_cluster starts (default 2); see docs/testing.md"
)
_TRIO_HELP = (
    "the grains_* silo and cluster fixtures are Trio fixtures: install pytest-trio and set "
    "`trio_mode = true` under [tool.pytest.ini_options] (or mark the test "
    "@pytest.mark.trio and make it `async def`)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)


def _markers(request: pytest.FixtureRequest) -> list[pytest.Mark]:
    """The test's ``grains`` markers, the closest (the test function's) first."""
    return list(request.node.iter_markers("grains"))


def _fail(message: str) -> None:
    # pytrace=False: the message is the whole story; a traceback into this plugin is noise.
    pytest.fail(message, pytrace=False)


@pytest.fixture
def grains_classes(request: pytest.FixtureRequest) -> tuple[type, ...]:
    """The grain classes that ``grains_silo`` and ``grains_cluster`` host.

    Those of every ``@pytest.mark.grains([...])`` that applies to the test (function, class
    and module markers together). Override the fixture to choose them another way.
    """
    classes: list[type] = []
    for mark in _markers(request):
        for arg in mark.args:
            # A list, as the docs write it: pytest takes a marker called with one class
            # and nothing else for its decorator form, and marks that class instead.
            for cls in arg if isinstance(arg, list | tuple) else [arg]:
                if not isinstance(cls, type):
                    _fail(
                        f"@pytest.mark.grains takes a list of grain classes; "
                        f"{request.node.nodeid} gives {cls!r} ({type(cls).__name__}). Pass "
                        "the classes themselves, e.g. @pytest.mark.grains([CartGrain]), and "
                        "the number of silos as silos=N"
                    )
                if cls not in classes:
                    classes.append(cls)
        unknown = sorted(set(mark.kwargs) - {"silos"})
        if unknown:
            _fail(
                f"@pytest.mark.grains got unknown keyword argument(s) {', '.join(unknown)} "
                f"on {request.node.nodeid}; it takes a list of grain classes and silos=N"
            )
    return tuple(classes)


@pytest.fixture
def grains_cluster_size(request: pytest.FixtureRequest) -> int:
    """How many silos ``grains_cluster`` starts: the closest ``grains`` marker's ``silos=``,
    else 2."""
    for mark in _markers(request):
        if "silos" in mark.kwargs:
            silos = mark.kwargs["silos"]
            if isinstance(silos, bool) or not isinstance(silos, int) or silos < 1:
                _fail(
                    f"@pytest.mark.grains(silos=...) must be a whole number of silos, at "
                    f"least 1; {request.node.nodeid} gives {silos!r}"
                )
            return int(silos)
    return DEFAULT_CLUSTER_SIZE


@pytest.fixture
def grains_silo_config() -> SiloConfig:
    """The configuration of ``grains_silo``, and the template of ``grains_cluster``'s silos.

    ``remote_tracebacks`` is on, as in ``open_test_cluster``: a failing remote grain shows
    where it failed. Override the fixture for storage providers, timeouts and the rest.
    """
    return SiloConfig(remote_tracebacks=True)


@pytest.fixture
def grains_plugins() -> Sequence[object]:
    """Extra plugin objects (modules or objects with ``@hookimpl`` functions) for the
    silos, registered after the installed ones. None by default."""
    return ()


def require_trio(request: pytest.FixtureRequest) -> None:
    """Fail the test, saying how to fix it, unless it runs under pytest-trio.

    For plugins' own Trio fixtures: call it from a *sync* fixture that the async one
    depends on. pytest sets that one up first, with or without pytest-trio, so the user
    reads this message rather than pytest's complaint about an unhandled async fixture.
    """
    if not request.config.pluginmanager.hasplugin("trio"):
        _fail(f"pytest-trio is not installed or is disabled: {_TRIO_HELP}")
    if request.node.get_closest_marker("trio") is None:
        _fail(f"{request.node.nodeid} does not run under pytest-trio: {_TRIO_HELP}")


@pytest.fixture
def _grains_trio_check(request: pytest.FixtureRequest) -> None:
    require_trio(request)


@pytest.fixture
async def grains_silo(
    _grains_trio_check: None,
    grains_silo_config: SiloConfig,
    grains_classes: tuple[type, ...],
    grains_plugins: Sequence[object],
) -> AsyncIterator[Silo]:
    """A silo running for the test (``open_silo``), hosting ``grains_classes``."""
    async with open_silo(grains_silo_config, grains=grains_classes, plugins=grains_plugins) as silo:
        yield silo


@pytest.fixture
async def grains_cluster(
    _grains_trio_check: None,
    grains_silo_config: SiloConfig,
    grains_classes: tuple[type, ...],
    grains_plugins: Sequence[object],
    grains_cluster_size: int,
) -> AsyncIterator[TestCluster]:
    """An in-process test cluster (``open_test_cluster``) of ``grains_cluster_size`` silos
    and a client, on a fresh in-memory cluster; every silo sees all the others active
    when the test starts."""
    async with open_test_cluster(
        grains_cluster_size,
        grains=grains_classes,
        config=grains_silo_config,
        plugins=grains_plugins,
    ) as cluster:
        yield cluster


@pytest.fixture
def grains_client(grains_cluster: TestCluster) -> Client:
    """The client of ``grains_cluster``: its calls cross the (in-memory) wire."""
    return grains_cluster.client
