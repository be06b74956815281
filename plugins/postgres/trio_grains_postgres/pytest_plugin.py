"""The pytest plugin of trio-grains-postgres: a throwaway PostgreSQL server per session.

pytest loads it through the ``pytest11`` entry point whenever trio-grains-postgres is
installed (``-p no:trio_grains_postgres`` turns it off). Fixtures:

* ``postgres_server`` (session): a :class:`~trio_grains_postgres.testing.PostgresTestServer`
  running for the whole session (:func:`~trio_grains_postgres.testing.running_test_server`:
  a fresh cluster in a temporary directory, on a free port of 127.0.0.1, trust
  authentication, fsync off). Tests must not stop it; one that needs to stop and start a
  server runs its own with :func:`postgres_server_or_skip`.
* ``postgres_dsn`` (session): its libpq connection string, for the ``dsn`` option of the
  ``postgres`` storage provider and reminder table.

The server programs come from the machine (``bash scripts/postgres.sh install`` installs
them on Debian/Ubuntu); nothing is downloaded. Where they are missing or the server cannot
start, the tests that use these fixtures are *skipped* with the reason and how to install
PostgreSQL, except when the ``CI`` environment variable is true (``true``, ``1``,
``yes``): there they *fail*, since a broken install must not pass as a green run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .testing import PostgresTestServer, PostgresUnavailable, running_test_server

__all__ = ["postgres_dsn", "postgres_server", "postgres_server_or_skip"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@contextlib.contextmanager
def postgres_server_or_skip(tmp_dir: str | os.PathLike[str]) -> Iterator[PostgresTestServer]:
    """Run a test server in *tmp_dir* for the ``with`` block; skip the test where PostgreSQL
    cannot start (fail it in CI), as the ``postgres_server`` fixture does."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_test_server(Path(tmp_dir)))
        except PostgresUnavailable as exc:
            if _in_ci():
                pytest.fail(f"PostgreSQL is required in CI and could not start: {exc}")
            pytest.skip(f"PostgreSQL is not available: {exc}")
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresTestServer]:
    """The session's PostgreSQL server. Tests must not stop it."""
    with postgres_server_or_skip(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresTestServer) -> str:
    """The session server's DSN: database ``postgres`` as the superuser, over TCP."""
    return postgres_server.dsn
