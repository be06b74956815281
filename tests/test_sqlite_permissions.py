"""The sqlite providers create their database files readable by their owner only (0600):
the database and its ``-wal`` / ``-shm`` files. An existing file keeps its mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import cattrs
import pytest

from trio_grains import GrainId, ProviderContext, ReminderEntry
from trio_grains._builtin.sqlite import open_sqlite_reminder_table, open_sqlite_storage

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")

CONTEXT = ProviderContext("default", "test-silo", "dev", cattrs.Converter())
GID = GrainId.create("cart", "bob")


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The usual 022, under which sqlite3 alone would create the files 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(path: Path) -> dict[str, int]:
    """The permission bits of *path* and of its -wal / -shm / -journal files that exist."""
    files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]
    return {f.name: stat.S_IMODE(f.stat().st_mode) for f in files if f.exists()}


async def test_storage_creates_its_files_0600(tmp_path: Path) -> None:
    path = tmp_path / "grains.db"
    async with open_sqlite_storage(CONTEXT, {"path": str(path)}) as storage:
        await storage.write("cart", GID, b"secret", None)
        modes = _modes(path)  # while open: WAL mode keeps -wal and -shm
    assert {"grains.db", "grains.db-wal", "grains.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
    assert set(_modes(path).values()) == {0o600}


async def test_reminder_table_creates_its_files_0600(tmp_path: Path) -> None:
    path = tmp_path / "reminders.db"
    async with open_sqlite_reminder_table(CONTEXT, {"path": str(path)}) as table:
        await table.upsert(ReminderEntry(GID, "tick", 1.0, 60.0))
        modes = _modes(path)
    assert "reminders.db-wal" in modes
    assert set(modes.values()) == {0o600}, modes


async def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with open_sqlite_storage(CONTEXT, {"path": str(path)}):
        pass
    path.chmod(0o640)  # an operator's choice, e.g. for a backup group
    async with open_sqlite_storage(CONTEXT, {"path": str(path)}) as storage:
        await storage.write("cart", GID, b"x", None)
        modes = _modes(path)
    assert modes["shared.db"] == 0o640
    assert modes["shared.db-wal"] == 0o640  # SQLite copies the database's mode
