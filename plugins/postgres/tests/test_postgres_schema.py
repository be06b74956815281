"""The schema: created on open, versioned, and the migrate command for DDL-less silos."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg import sql
from trio_grains_postgres import SCHEMA_VERSION
from trio_grains_postgres.__main__ import main

from trio_grains import GrainId, StorageError

GID = GrainId.create("cart", 1)


def tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


async def test_opening_creates_the_schema(
    open_storage: Any, postgres_dsn: str, schema: str
) -> None:
    assert tables(postgres_dsn, schema) == set()
    async with open_storage():
        pass
    assert tables(postgres_dsn, schema) == {"grain_state", "reminders", "schema_version"}
    with psycopg.connect(postgres_dsn) as conn:
        version = conn.execute(
            sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, "schema_version"))
        ).fetchall()
    assert version == [(SCHEMA_VERSION,)]


async def test_opening_twice_at_once_is_fine(open_storage: Any, open_table: Any) -> None:
    async with open_storage() as storage, open_table() as table, open_storage() as again:
        etag = await storage.write("s", GID, b"x", None)
        assert (await again.read("s", GID)).etag == etag
        assert await table.read_all() == []


async def test_without_create_schema_a_missing_schema_names_the_command(
    open_storage: Any, postgres_dsn: str, schema: str
) -> None:
    with pytest.raises(StorageError) as info:
        async with open_storage(create_schema=False):
            pass  # pragma: no cover
    message = str(info.value)
    assert "does not exist" in message
    assert f"python -m trio_grains_postgres migrate --dsn <your dsn> --schema {schema}" in message
    assert tables(postgres_dsn, schema) == set()  # nothing was created

    assert main(["migrate", "--dsn", postgres_dsn, "--schema", schema]) == 0
    async with open_storage(create_schema=False) as storage:
        assert await storage.read("s", GID) is None


async def test_a_newer_schema_is_refused(open_storage: Any, postgres_dsn: str, schema: str) -> None:
    async with open_storage():
        pass
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (version, description) VALUES (99, 'future')").format(
                sql.Identifier(schema, "schema_version")
            )
        )
    for create in (True, False):
        with pytest.raises(StorageError, match="upgrade trio-grains-postgres"):
            async with open_storage(create_schema=create):
                pass  # pragma: no cover


def test_migrate_command(
    postgres_dsn: str, schema: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    assert main(["migrate", "--dsn", postgres_dsn, "--schema", schema, "--check"]) == 1
    assert "version 0" in capsys.readouterr().out
    assert main(["migrate", "--dsn", postgres_dsn, "--schema", schema]) == 0
    assert f"migrated from version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    monkeypatch.setenv("TG_ADMIN_DSN", postgres_dsn)
    assert main(["migrate", "--dsn-env", "TG_ADMIN_DSN", "--schema", schema]) == 0
    assert f"already at version {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["migrate", "--dsn", postgres_dsn, "--schema", schema, "--check"]) == 0
    assert tables(postgres_dsn, schema) == {"grain_state", "reminders", "schema_version"}


def test_migrate_command_reports_errors_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = "postgresql://admin:hunter2@127.0.0.1:1/grains?connect_timeout=2"
    assert main(["migrate", "--dsn", dsn]) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL at 127.0.0.1:1, database 'grains'" in err
    assert "hunter2" not in err


def test_python_dash_m(postgres_dsn: str, schema: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_grains_postgres",
            "migrate",
            "--dsn",
            postgres_dsn,
            "--schema",
            schema,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"schema {schema!r}" in result.stdout
    assert tables(postgres_dsn, schema) == {"grain_state", "reminders", "schema_version"}


async def test_a_role_without_ddl_rights(open_storage: Any, postgres_dsn: str, schema: str) -> None:
    role = f"silo_{schema}"
    admin = psycopg.connect(postgres_dsn, autocommit=True)
    with admin:
        # a new role may connect, but not create schemas (PUBLIC lacks CREATE on databases)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            silo_dsn = f"{postgres_dsn} user={role}"
            # before the migration: the role cannot create the schema, and is told what to do
            with pytest.raises(StorageError, match="migrate` as one that may"):
                async with open_storage(dsn=silo_dsn):
                    pass  # pragma: no cover

            assert main(["migrate", "--dsn", postgres_dsn, "--schema", schema]) == 0
            for grant in (  # the grants docs/storage-postgres.md lists
                "GRANT USAGE ON SCHEMA {s} TO {r}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.grain_state, {s}.reminders TO {r}",
                "GRANT SELECT ON {s}.schema_version TO {r}",
            ):
                admin.execute(
                    sql.SQL(grant).format(s=sql.Identifier(schema), r=sql.Identifier(role))
                )
            for create_schema in (False, True):  # a current schema needs no DDL either way
                async with open_storage(dsn=silo_dsn, create_schema=create_schema) as storage:
                    etag = await storage.write("s", GID, b"x", None)
                    await storage.clear("s", GID, etag)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
