"""The throwaway test server of trio_grains_postgres.testing."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import psycopg
import pytest
from trio_grains_postgres import testing
from trio_grains_postgres.testing import PostgresTestServer, PostgresUnavailable


def test_missing_programs_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(PostgresUnavailable, match=r"bash scripts/postgres\.sh install"):
        testing.find_server_programs()
    with pytest.raises(PostgresUnavailable), testing.start_test_server("/nonexistent"):
        pass  # pragma: no cover


def test_a_server_runs_stops_starts_and_is_removed(
    postgres_server: PostgresTestServer, tmp_path: Path
) -> None:
    # (postgres_server: skip or fail like the other tests where PostgreSQL is missing)
    with testing.running_test_server(tmp_path) as server:
        assert server.port != postgres_server.port
        assert server.is_running()
        with psycopg.connect(server.dsn) as conn:
            row = conn.execute("SELECT current_user, inet_server_addr()::text").fetchone()
        assert row == (server.user, "127.0.0.1/32")
        if os.geteuid() == 0:
            assert server.user == "postgres"  # PostgreSQL refuses to run as root
        hba = (server.data_dir / "pg_hba.conf").read_text()
        assert "127.0.0.1/32 trust" in hba
        assert "::1" not in hba
        server.stop()
        assert not server.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.dsn, connect_timeout=2).close()
        server.start()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        base = server.base_dir
    assert not base.exists()


def test_start_test_server_yields_a_dsn(
    postgres_server: PostgresTestServer, tmp_path: Path
) -> None:
    with testing.start_test_server(tmp_path) as dsn:
        assert "host=127.0.0.1" in dsn
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
