"""Fixtures: a real PostgreSQL server (no mocks), started once per session.

``postgres_server`` and ``postgres_dsn`` come from the plugin's pytest plugin
(:mod:`trio_grains_postgres.pytest_plugin`, docs/testing.md). Where PostgreSQL cannot be
started, the tests that need it are skipped with the reason (how to install it), except
in CI (``CI=true``), where they fail: a broken install must not pass as a green run.
"""

from __future__ import annotations

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
from trio_grains_postgres.pytest_plugin import postgres_server_or_skip
from trio_grains_postgres.testing import PostgresTestServer

from trio_grains import ProviderContext

StorageOpener = Callable[..., AbstractAsyncContextManager[PostgresStorage]]
TableOpener = Callable[..., AbstractAsyncContextManager[PostgresReminderTable]]


@pytest.fixture
def own_postgres_server(tmp_path: Path) -> Iterator[PostgresTestServer]:
    """A server of the test's own, which it may stop and start."""
    with postgres_server_or_skip(tmp_path) as server:
        yield server


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
