"""Fixtures: a real PostgreSQL server (no mocks), started once per session.

The server comes from :mod:`trio_grains_postgres.testing`. Where PostgreSQL cannot be
started, the tests that need it are skipped with the reason (how to install it), except
in CI (``CI=true``), where they fail: a broken install must not pass as a green run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import cattrs
import pytest
from trio_grains_postgres import (
    PostgresReminderTable,
    PostgresStorage,
    open_postgres_reminder_table,
    open_postgres_storage,
)
from trio_grains_postgres.testing import (
    PostgresTestServer,
    PostgresUnavailable,
    running_test_server,
)

from trio_grains import ProviderContext

StorageOpener = Callable[..., AbstractAsyncContextManager[PostgresStorage]]
TableOpener = Callable[..., AbstractAsyncContextManager[PostgresReminderTable]]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@contextlib.contextmanager
def _server(tmp_dir: Path) -> Iterator[PostgresTestServer]:
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_test_server(tmp_dir))
        except PostgresUnavailable as exc:
            if _in_ci():
                pytest.fail(f"PostgreSQL is required in CI and could not start: {exc}")
            pytest.skip(f"PostgreSQL is not available: {exc}")
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresTestServer]:
    """The session's server. Tests must not stop it: use ``own_postgres_server`` for that."""
    with _server(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def own_postgres_server(tmp_path: Path) -> Iterator[PostgresTestServer]:
    """A server of the test's own, which it may stop and start."""
    with _server(tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresTestServer) -> str:
    return postgres_server.dsn


@pytest.fixture
def schema() -> str:
    """A schema of the test's own, so that tests never see each other's rows."""
    return f"test_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def pg_options(postgres_dsn: str, schema: str) -> dict[str, Any]:
    return {"dsn": postgres_dsn, "schema": schema, "connect_timeout": 5}


def provider_context(name: str = "default") -> ProviderContext:
    return ProviderContext(
        name=name, silo_name="test-silo", cluster_id="test", converter=cattrs.Converter()
    )


@pytest.fixture
def open_storage(pg_options: dict[str, Any]) -> StorageOpener:
    """``open_storage(**option_overrides)``: a storage provider on the test's schema."""

    def opener(**overrides: Any) -> AbstractAsyncContextManager[PostgresStorage]:
        return open_postgres_storage(provider_context(), {**pg_options, **overrides})

    return opener


@pytest.fixture
def open_table(pg_options: dict[str, Any]) -> TableOpener:
    """``open_table(**option_overrides)``: a reminder table on the test's schema."""

    def opener(**overrides: Any) -> AbstractAsyncContextManager[PostgresReminderTable]:
        return open_postgres_reminder_table(provider_context(), {**pg_options, **overrides})

    return opener
