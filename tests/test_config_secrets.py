"""Configs printed in logs and errors show no credentials."""

from __future__ import annotations

from trio_grains import ClientConfig, ProviderConfig, SiloConfig


def test_provider_options_hide_secrets_in_repr() -> None:
    options = {
        "servers": ["nats://alice:s3cret-pw@nats-1:4222", "nats://tok3n@nats-2:4222"],
        "password": "s3cret-pw",
        "token": "tok3n",
        "nkeys_seed": "SUAMSEED",
        "tls": {"private_key_password": "k3y-pw", "ca": "/etc/ca.pem"},
        "bucket": "grains",
    }
    config = SiloConfig(clustering=ProviderConfig(provider="nats", options=options))
    client = ClientConfig(clustering=ProviderConfig(provider="nats", options=options))
    for shown in (repr(config), repr(client), repr(config.clustering)):
        for secret in ("s3cret-pw", "tok3n", "SUAMSEED", "k3y-pw"):
            assert secret not in shown
        assert "nats://alice:***@nats-1:4222" in shown
        assert "nats://***@nats-2:4222" in shown
        assert "'bucket': 'grains'" in shown
        assert "/etc/ca.pem" in shown
    # the values themselves are untouched
    assert config.clustering is not None
    assert config.clustering.options["password"] == "s3cret-pw"
