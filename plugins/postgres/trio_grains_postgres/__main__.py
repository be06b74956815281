"""``python -m trio_grains_postgres``: create or upgrade the schema, or check its version.

    python -m trio_grains_postgres migrate --dsn postgresql://admin@db/grains
    python -m trio_grains_postgres migrate --dsn-env ADMIN_DSN --schema grains_prod
    python -m trio_grains_postgres migrate --dsn ... --check    # exit 1 unless up to date

For deployments whose silos connect with a role that may not create tables: run this as
a role that may, and give the silos ``create_schema = false``. Safe to run repeatedly and
concurrently (one transaction under an advisory lock).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from trio_grains import ConfigError, StorageError

from ._options import DEFAULT_SCHEMA, PostgresOptions
from ._schema import SCHEMA_VERSION, current_version, migrate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_grains_postgres",
        description="Manage the PostgreSQL schema of trio-grains-postgres.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser(
        "migrate",
        help=f"create the schema or upgrade it to version {SCHEMA_VERSION}",
        description=(
            f"Create the schema, or upgrade it to version {SCHEMA_VERSION}, in one "
            "transaction. Run it as a role that may create schemas and tables."
        ),
    )
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--dsn", help="libpq connection string or postgresql:// URL")
    source.add_argument("--dsn-env", metavar="VAR", help="environment variable holding the dsn")
    cmd.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"default: {DEFAULT_SCHEMA}")
    cmd.add_argument(
        "--check",
        action="store_true",
        help="change nothing: print the version, exit 1 unless it is the current one",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raw = {"dsn_env": args.dsn_env} if args.dsn_env else {"dsn": args.dsn}
    try:
        options = PostgresOptions.from_mapping({**raw, "schema": args.schema}, "migrate command")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target, schema = options.target, options.schema
    try:
        with psycopg.connect(options.dsn, connect_timeout=10) as conn:
            if args.check:
                version = current_version(conn, schema)
                print(
                    f"schema {schema!r} in {target}: version {version} (current: {SCHEMA_VERSION})"
                )
                return 0 if version == SCHEMA_VERSION else 1
            before, after = migrate(conn, schema)
    except (psycopg.Error, StorageError) as exc:
        print(f"error: {target}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"schema {schema!r} in {target} is already at version {after}")
    else:
        print(f"schema {schema!r} in {target} migrated from version {before} to {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
