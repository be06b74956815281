"""The provider options: validated when the factory is called, before any I/O.

Every problem is reported at once in one :class:`~trio_grains.ConfigError` naming the key.
A DSN is never repeated in a message (it may hold a password): :func:`describe_target`
names the server by host, port, database and user only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict

from trio_grains import ConfigError

__all__ = ["DEFAULT_SCHEMA", "PostgresOptions", "describe_target"]

DEFAULT_SCHEMA = "trio_grains"
_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL silently truncates longer names

_KEYS = ("dsn", "dsn_env", "pool_size", "schema", "create_schema", "connect_timeout")


@attrs.frozen
class PostgresOptions:
    """The ``options`` table of a ``postgres`` storage provider or reminder table.

    * ``dsn``: a libpq connection string (``"host=db dbname=grains user=silo"``) or URL
      (``"postgresql://silo@db/grains"``); or ``dsn_env``, the name of an environment
      variable holding one (keeps passwords out of configuration files).
    * ``pool_size``: connections of the provider, default 4.
    * ``schema``: the PostgreSQL schema holding the tables, default ``"trio_grains"``.
    * ``create_schema``: create or upgrade the schema when the provider opens (default
      true); false for a role without DDL rights (run the ``migrate`` command instead).
    * ``connect_timeout``: seconds an operation that needs a new connection keeps trying to
      open one before it fails with :class:`~trio_grains.StorageError` (default 10; a
      deadline on Trio's clock, ``inf`` for none); also how long a cancelled operation
      waits at most for its statement's outcome.
    """

    dsn: str = attrs.field(repr=False)
    pool_size: int = 4
    schema: str = DEFAULT_SCHEMA
    create_schema: bool = True
    connect_timeout: float = 10.0

    @property
    def target(self) -> str:
        """``PostgreSQL at host:port, database 'x' as user 'y'``: no password."""
        return describe_target(self.dsn)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], what: str) -> PostgresOptions:
        """Validate *options*; *what* names the provider in errors (``postgres storage ...``)."""
        problems: list[str] = []
        unknown = sorted(set(options) - set(_KEYS))
        if unknown:
            problems.append(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                f"; the options are {', '.join(_KEYS)}"
            )
        dsn = _dsn(options, problems)
        pool_size = options.get("pool_size", 4)
        if type(pool_size) is not int or not 1 <= pool_size <= 1000:
            problems.append(f"pool_size must be an integer from 1 to 1000, got {pool_size!r}")
        schema = options.get("schema", DEFAULT_SCHEMA)
        if not isinstance(schema, str) or not schema or "\x00" in schema:
            problems.append(f"schema must be a non-empty string, got {schema!r}")
        elif len(schema.encode()) > _MAX_IDENTIFIER_BYTES:
            problems.append(
                f"schema {schema!r} is longer than PostgreSQL's {_MAX_IDENTIFIER_BYTES}-byte "
                "limit for names; choose a shorter one"
            )
        create_schema = options.get("create_schema", True)
        if not isinstance(create_schema, bool):
            problems.append(f"create_schema must be true or false, got {create_schema!r}")
        timeout = options.get("connect_timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            problems.append(
                f"connect_timeout must be a positive number of seconds, got {timeout!r}"
            )
        if problems:
            raise ConfigError(f"invalid options for the {what}:\n  " + "\n  ".join(problems))
        assert dsn is not None
        return cls(
            dsn=dsn,
            pool_size=pool_size,
            schema=schema,
            create_schema=create_schema,
            connect_timeout=float(timeout),
        )


def _dsn(options: Mapping[str, Any], problems: list[str]) -> str | None:
    dsn = options.get("dsn")
    env = options.get("dsn_env")
    if dsn is not None and env is not None:
        problems.append("give either dsn or dsn_env, not both")
        return None
    if env is not None:
        if not isinstance(env, str) or not env:
            problems.append(f"dsn_env must name an environment variable, got {env!r}")
            return None
        dsn = os.environ.get(env)
        if not dsn:
            problems.append(
                f"dsn_env names the environment variable {env!r}, which is not set or empty; "
                "set it to a connection string such as postgresql://user@host/dbname"
            )
            return None
    elif dsn is None:
        problems.append(
            "missing option 'dsn': a connection string such as "
            "'postgresql://user@host:5432/dbname' (or 'dsn_env' naming a variable holding one)"
        )
        return None
    elif not isinstance(dsn, str) or not dsn.strip():
        problems.append(f"dsn must be a non-empty connection string, got a {type(dsn).__name__}")
        return None
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq's message quotes the offending keyword, never the whole string.
        problems.append(f"the dsn is not a valid libpq connection string or URL: {exc}")
        return None
    return dsn


def describe_target(dsn: str) -> str:
    """Name the server a DSN points at, for messages: host, port, database, user; no password.

    Parameters the DSN leaves out are named by libpq's environment variables or defaults.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparsable dsn)"
    host = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "")
    port = str(params.get("port") or os.environ.get("PGPORT") or "")
    user = str(params.get("user") or os.environ.get("PGUSER") or "")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user or "")
    where = host or "the default host"
    if port:
        where += f":{port}"
    text = f"PostgreSQL at {where}"
    if dbname:
        text += f", database {dbname!r}"
    if user:
        text += f" as user {user!r}"
    return text
