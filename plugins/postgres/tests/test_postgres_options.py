"""Option validation: eager, every problem at once, never echoing a password."""

from __future__ import annotations

from typing import Any

import cattrs
import pytest
from trio_grains_postgres import PostgresOptions, open_postgres_storage
from trio_grains_postgres._options import describe_target

from trio_grains import ConfigError, ProviderContext

DSN = "host=127.0.0.1 port=5432 dbname=grains user=silo"


def parse(options: dict[str, Any]) -> PostgresOptions:
    return PostgresOptions.from_mapping(options, "postgres storage provider 'default'")


def test_defaults() -> None:
    opts = parse({"dsn": DSN})
    assert (opts.dsn, opts.pool_size, opts.schema, opts.create_schema) == (
        DSN,
        4,
        "trio_grains",
        True,
    )
    assert opts.connect_timeout == 10.0


def test_every_option() -> None:
    opts = parse(
        {
            "dsn": DSN,
            "pool_size": 9,
            "schema": "Grains Prod",
            "create_schema": False,
            "connect_timeout": 2,
        }
    )
    assert (opts.pool_size, opts.schema, opts.create_schema, opts.connect_timeout) == (
        9,
        "Grains Prod",
        False,
        2.0,
    )


def test_unknown_keys_are_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"dsn": DSN, "poolsize": 3, "host": "db"})
    message = str(info.value)
    assert "'host', 'poolsize'" in message
    assert "pool_size" in message  # the valid keys are listed
    assert "postgres storage provider 'default'" in message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            {
                "pool_size": 0,
                "schema": "",
                "create_schema": "yes",
                "connect_timeout": -1,
            }
        )
    message = str(info.value)
    for key in ("missing option 'dsn'", "pool_size", "schema", "create_schema", "connect_timeout"):
        assert key in message


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"dsn": DSN, "pool_size": True}, "pool_size"),
        ({"dsn": DSN, "pool_size": "4"}, "pool_size"),
        ({"dsn": DSN, "pool_size": 4.0}, "pool_size"),
        ({"dsn": DSN, "schema": "x" * 64}, "63-byte"),
        ({"dsn": DSN, "schema": 5}, "schema"),
        ({"dsn": DSN, "connect_timeout": True}, "connect_timeout"),
        ({"dsn": DSN, "dsn_env": "X"}, "not both"),
        ({"dsn": ""}, "non-empty"),
        ({"dsn": 42}, "non-empty"),
        ({"dsn_env": ""}, "environment variable"),
    ],
)
def test_bad_values(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse(options)


def test_dsn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_DSN", DSN)
    assert parse({"dsn_env": "TG_TEST_DSN"}).dsn == DSN
    monkeypatch.delenv("TG_TEST_DSN")
    with pytest.raises(ConfigError, match="'TG_TEST_DSN', which is not set"):
        parse({"dsn_env": "TG_TEST_DSN"})


def test_a_bad_dsn_is_reported_without_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"dsn": "host=db password=hunter2 nonsense"})
    assert "dsn" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_describe_target_names_the_server_but_not_the_password() -> None:
    text = describe_target("postgresql://silo:hunter2@db.example:6543/grains")
    assert text == "PostgreSQL at db.example:6543, database 'grains' as user 'silo'"
    assert "hunter2" not in repr(parse({"dsn": "postgresql://silo:hunter2@db/grains"}))


def test_the_factory_validates_when_called_before_any_io() -> None:
    context = ProviderContext("default", "silo", "dev", cattrs.Converter())
    with pytest.raises(ConfigError, match="missing option 'dsn'"):
        open_postgres_storage(context, {})  # no await: nothing was entered yet
