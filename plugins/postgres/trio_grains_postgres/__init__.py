"""PostgreSQL grain storage and reminder table for trio-grains.

Install ``trio-grains-postgres`` and configure the silo::

    [storage.default]
    provider = "postgres"
    options = { dsn = "postgresql://silo@db.internal/grains" }

    [reminders]
    provider = "postgres"
    options = { dsn_env = "GRAINS_DSN" }

The plugin is found through its ``trio_grains`` entry point (``postgres``). See
``docs/storage-postgres.md`` for the options, the schema and its migration command
(``python -m trio_grains_postgres migrate --dsn ...``), and the threading design.

Design: psycopg 3's async API is asyncio-only, so every operation runs psycopg's sync API
in a worker thread on a connection of a ``psycopg_pool.ConnectionPool`` (one thread per
connection; see ``_database.py``). Measured with ``plugins/postgres/benchmarks/writes.py``
(psycopg 3.3.9, PostgreSQL 15 on the same 2-core machine, loopback, fsync off; the same
compare-and-set ``UPDATE`` in both loops), in writes/s:

=======================================  ===============
psycopg alone, 1 connection              3,900 - 5,300
provider, 1 Trio task                    2,050 - 2,060
psycopg alone, 4 threads x 1 connection  5,400 - 6,100
provider, 4 Trio tasks, pool_size 4      3,200 - 3,400
provider, 16 Trio tasks, pool_size 8     3,300 - 3,400
=======================================  ===============

The difference is the thread hop: about 0.22 ms per operation (Trio -> thread -> Trio),
as much as a ``SELECT 1`` round trip (0.17 ms) on a local server.
"""

from ._database import Database as Database
from ._options import DEFAULT_SCHEMA as DEFAULT_SCHEMA
from ._options import PostgresOptions as PostgresOptions
from ._reminders import PostgresReminderTable as PostgresReminderTable
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._schema import migrate as migrate
from ._storage import PostgresStorage as PostgresStorage
from .plugin import open_postgres_reminder_table as open_postgres_reminder_table
from .plugin import open_postgres_storage as open_postgres_storage

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SCHEMA",
    "SCHEMA_VERSION",
    "Database",
    "PostgresOptions",
    "PostgresReminderTable",
    "PostgresStorage",
    "migrate",
    "open_postgres_reminder_table",
    "open_postgres_storage",
]
