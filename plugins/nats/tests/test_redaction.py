"""Secrets are never printed: passwords, tokens and NKEY seeds stay out of every error,
config repr and address repr (against a real nats-server with user/password auth)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cattrs
import nkeys
import pytest
from trio_grains_nats import AuthorizationError, NatsConnectionError, connect
from trio_grains_nats._options import ConnectOptions, unreachable_error
from trio_grains_nats.client._handshake import parse_servers, redact_url
from trio_grains_nats.clustering import open_nats_cluster, parse_cluster_options
from trio_grains_nats.reminders import parse_reminder_options
from trio_grains_nats.storage import open_nats_kv_storage, parse_storage_options
from trio_grains_nats.streams import parse_options as parse_stream_options
from trio_grains_nats.testing import run_nats_server

from trio_grains import ConfigError, ProviderContext

PASSWORD = "s3cret-pw"
TOKEN = "tok-9f8e7d"
SEED = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
SECRETS = (PASSWORD, TOKEN, SEED)


def _assert_hidden(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} printed in {text!r}"


@pytest.fixture(scope="module")
def userpass_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("userpass")
    with run_nats_server(tmp, jetstream=True, args=["--user", "alice", "--pass", PASSWORD]) as url:
        yield url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:pw@host:4222", "nats://alice:***@host:4222"),
        ("alice:pw@host", "alice:***@host"),
        ("tls://alice:p@ss/w:rd@host:4222", "tls://alice:***@host:4222"),
        ("nats://tok-123@host", "nats://***@host"),
        ("nats://host:4222", "nats://host:4222"),
        ("nats://alice:@host", "nats://alice:***@host"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_server_address_repr_hides_password_and_token() -> None:
    with_password, with_token, plain = parse_servers(
        ["nats://alice:pw-1@h1:1", "nats://tok-2@h2:2", "h3"]
    )
    assert with_password.password == "pw-1"  # still there to connect with
    assert repr(with_password) == "ServerAddress('nats://alice:***@h1:1')"
    assert repr(with_token) == "ServerAddress('nats://***@h2:2')"
    assert repr(plain) == "ServerAddress('nats://h3:4222')"


def test_bad_server_url_errors_hide_the_password() -> None:
    for url in ("http://alice:pw-1@host", "nats://alice:pw/1@host", "nats://alice:pw-1@"):
        with pytest.raises(ValueError, match="bad server URL") as info:
            parse_servers(url)
        assert "pw" not in str(info.value), str(info.value)


def _all_options() -> dict[str, Any]:
    return {
        "servers": [f"nats://alice:{PASSWORD}@a:4222", f"nats://{TOKEN}@b:4222"],
        "user": "alice",
        "password": PASSWORD,
        "token": TOKEN,
        "nkeys_seed": SEED,
        "creds": "/etc/nats/user.creds",
    }


def test_config_reprs_hide_secrets() -> None:
    configs = [
        ConnectOptions(servers=tuple(_all_options()["servers"]), password=PASSWORD, token=TOKEN),
        parse_cluster_options("dev", _all_options()),
        parse_storage_options("default", _all_options()),
        parse_reminder_options(_all_options()),
        parse_stream_options("default", _all_options()),
    ]
    for config in configs:
        text = repr(config)
        _assert_hidden(text)
        assert "nats://alice:***@a:4222" in text
        assert "nats://***@b:4222" in text
    text = repr(configs[1])
    assert "user='alice'" in text
    assert "password='***'" in text
    assert "token='***'" in text
    assert "nkeys_seed='***'" in text
    assert "creds='/etc/nats/user.creds'" in text  # a path, not a secret
    assert "password=None" in repr(ConnectOptions())


@pytest.mark.parametrize("key", ["password", "token", "nkeys_seed"])
def test_option_errors_do_not_quote_secrets(key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        parse_cluster_options("dev", {key: 918273645})
    assert "918273645" not in str(info.value)
    assert "got '***'" in str(info.value)


def test_servers_option_error_hides_passwords() -> None:
    with pytest.raises(ConfigError, match="'servers'") as info:
        parse_storage_options("default", {"servers": [f"nats://alice:{PASSWORD}@a", 5]})
    _assert_hidden(str(info.value))
    assert "nats://alice:***@a" in str(info.value)


async def test_unreachable_error_hides_passwords() -> None:
    servers = (f"nats://alice:{PASSWORD}@127.0.0.1:1", f"nats://{TOKEN}@127.0.0.1:2")
    options = ConnectOptions(servers=servers, token=TOKEN)
    with pytest.raises(NatsConnectionError) as info:
        async with options.connect(name="redaction"):
            pass  # pragma: no cover
    _assert_hidden(str(info.value))
    message = str(unreachable_error("[storage.default]", servers, info.value))
    _assert_hidden(message)
    assert "nats://alice:***@127.0.0.1:1, nats://***@127.0.0.1:2" in message


async def test_a_provider_that_cannot_connect_hides_passwords() -> None:
    options = {"servers": f"nats://alice:{PASSWORD}@127.0.0.1:1", "token": TOKEN}
    context = ProviderContext("clustering", "silo-1", "dev", cattrs.Converter())
    with pytest.raises(ConfigError, match="cannot reach a NATS server") as info:
        async with open_nats_cluster(context, options):
            pass  # pragma: no cover
    _assert_hidden(str(info.value))
    assert "nats://alice:***@127.0.0.1:1" in str(info.value)


async def test_refused_credentials_are_not_printed(userpass_url: str) -> None:
    host = userpass_url.removeprefix("nats://")
    wrong = f"wrong-{PASSWORD}"
    attempts: list[dict[str, Any]] = [
        {"servers": f"nats://alice:{wrong}@{host}"},
        {"servers": userpass_url, "user": "alice", "password": wrong},
        {"servers": f"nats://{TOKEN}@{host}"},
        {"servers": userpass_url, "token": TOKEN},
    ]
    for kwargs in attempts:
        with pytest.raises(AuthorizationError) as info:
            async with connect(**kwargs):
                pass  # pragma: no cover
        text = f"{info.value} {info.value!r} {info.value.__cause__}"
        _assert_hidden(text)
        assert wrong not in text


async def test_a_provider_refused_by_the_server_hides_the_password(
    userpass_url: str, tmp_path: Path
) -> None:
    host = userpass_url.removeprefix("nats://")
    context = ProviderContext("default", "silo-1", "dev", cattrs.Converter())
    options = {"servers": f"nats://alice:wrong-{PASSWORD}@{host}", "storage": "memory"}
    with pytest.raises(ConfigError, match="refused") as info:
        async with open_nats_kv_storage(context, options):
            pass  # pragma: no cover
    assert isinstance(info.value.__cause__, AuthorizationError)
    _assert_hidden(f"{info.value} {info.value!r} {info.value.__cause__!r}")
    # and with the right password the URL works (the redaction changed nothing else)
    options["servers"] = f"nats://alice:{PASSWORD}@{host}"
    async with open_nats_kv_storage(context, options) as storage:
        _assert_hidden(repr(storage))
