"""The plugin's pytest fixtures (``trio_grains_nats.pytest_plugin``), run as a user runs them."""

from __future__ import annotations

import pytest

USER_TESTS = """
import socket
from urllib.parse import urlsplit

import pytest
from trio_grains import Grain, SiloConfig

IDS = []


class TallyGrain(Grain):
    def __init__(self) -> None:
        self.count = 0

    async def add(self, n: int) -> int:
        self.count += n
        return self.count


@pytest.fixture
def grains_silo_config():
    return SiloConfig(cluster_id="shop", heartbeat_interval=0.2, dead_after=1.0)


def test_the_server_is_a_plain_fixture(nats_server):
    url = urlsplit(nats_server)
    assert (url.scheme, url.hostname) == ("nats", "127.0.0.1")
    socket.create_connection((url.hostname, url.port), timeout=5).close()


@pytest.mark.parametrize("run", [1, 2])
@pytest.mark.grains([TallyGrain], silos=3)
async def test_each_test_has_a_cluster_of_its_own(grains_nats_cluster, run):
    ids = {silo.config.cluster_id for silo in grains_nats_cluster.silos}
    assert len(grains_nats_cluster.silos) == 3
    assert len(ids) == 1
    (cluster_id,) = ids
    assert cluster_id.startswith("shop-")
    assert grains_nats_cluster.memory is None  # not the in-memory cluster
    IDS.append(cluster_id)
    assert len(set(IDS)) == len(IDS)
    tally = grains_nats_cluster.get_grain(TallyGrain, "t")
    assert await tally.add(2) == 2  # a fresh grain: nothing left from the other run
"""


def test_nats_server_and_grains_nats_cluster(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\ntrio_mode = true\nfilterwarnings = ["error"]\n'
    )
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3)
