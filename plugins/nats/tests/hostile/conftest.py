"""Fixtures of the hostile-client suite (issue 13): a silo to attack and an attacker.

The session's real nats-server (``nats_url``) and the ``nc`` connection come from the
plugin's ``tests/conftest.py``. Here:

* ``env``: one silo of a fresh cluster in the test's Trio run (NATS clustering, a
  JetStream stream provider, nats-kv storage) hosting the victim grains of
  ``_hostile_grains.py`` (see :func:`_hostile.open_hostile_env` for other shapes);
* ``hostile``: a :class:`_hostile.HostileClient` on that cluster, on its own plain NATS
  connection (no trio-grains runtime code);
* ``victim_client``: a trio-grains client of ``env``'s cluster, whose calls cross the wire;
* ``procs``: child processes (``_processes.py`` of the plugin's tests), killed at the end.

Helpers for messages, subjects and reading the harm back are in ``_hostile.py``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# the plugin's process helpers (``_processes.py``) live one folder up
_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from _hostile import HostileClient, HostileEnv, open_hostile_client, open_hostile_env  # noqa: E402
from _hostile_grains import SINK_ITEMS, SLEEPING  # noqa: E402
from _processes import Processes, processes  # noqa: E402

from trio_grains import Client, open_client  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_records() -> None:
    SINK_ITEMS.clear()
    SLEEPING.clear()


@pytest.fixture
async def env(nats_url: str) -> AsyncIterator[HostileEnv]:
    async with open_hostile_env(nats_url) as env:
        yield env


@pytest.fixture
async def hostile(env: HostileEnv) -> AsyncIterator[HostileClient]:
    async with open_hostile_client(env.url, env.cluster_id) as client:
        yield client


@pytest.fixture
async def victim_client(env: HostileEnv) -> AsyncIterator[Client]:
    async with open_client(env.client_config()) as client:
        await client.wait_for_silos(len(env.silos))
        yield client


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Processes]:
    async with processes(tmp_path) as p:
        yield p
