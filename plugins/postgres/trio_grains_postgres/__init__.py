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
(``python -m trio_grains_postgres migrate --dsn ...``), and the design.

Design: psycopg 3's async API is asyncio-only, so the providers drive libpq's non-blocking
API through psycopg's documented ``psycopg.pq`` wrapper from Trio itself
(``_native.py``: ``wait_readable`` / ``wait_writable`` on the connection's socket, no
thread), on a pool of ``pool_size`` connections handed out by a ``trio.Semaphore``
(``_database.py``); statements are prepared once per connection. Measured with
``benchmarks/run.py storage`` (grains writing state; psycopg's sync API alone on one
connection with the same compare-and-set ``UPDATE`` as the floor; PostgreSQL 15 on the
same shared 2-core machine, loopback, fsync off), as ratios to that floor:

=====================================  ==============  ==================
mode                                   worker threads  Trio-native (now)
=====================================  ==============  ==================
100 grains writing, ``pool_size`` 8    0.38 - 0.65     0.94 - 1.65
one grain writing in a loop            0.26 - 0.37     0.89 - 0.97
=====================================  ==============  ==================

The thread hop it replaced cost about 0.2 ms per operation, more than the statement.
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
