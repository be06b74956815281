"""Connection options shared by the plugin's providers: servers, credentials, TLS.

Each provider's option parser validates these keys with :func:`parse_connect_options`
(errors are the provider's own :class:`~trio_grains.ConfigError`, naming the key), and its
config class inherits :class:`ConnectOptions` to connect with them.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
from nats.js.api import StorageType

from trio_grains import ConfigError

from ._connection import Connection, connect
from ._exceptions import AuthorizationError, NatsConnectionError

__all__ = [
    "CONNECT_OPTIONS",
    "ConnectOptions",
    "parse_connect_options",
    "parse_servers_option",
    "unreachable_error",
]

_CREDENTIALS = ("user", "password", "token", "nkeys_seed", "creds", "tls_ca", "tls_cert", "tls_key")
CONNECT_OPTIONS = frozenset({"servers", *_CREDENTIALS})
"""The option keys :func:`parse_connect_options` handles."""

BadOption = Callable[[str, str], ConfigError]
"""``bad(key, what)``: the provider's ConfigError for option *key*, which must be *what*."""


@attrs.frozen(kw_only=True)
class ConnectOptions:
    """Where and how to connect: servers, credentials and TLS files (all optional)."""

    servers: tuple[str, ...] = ()
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkeys_seed: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context from ``tls_ca`` / ``tls_cert`` / ``tls_key``, if any is set."""
        if not (self.tls_ca or self.tls_cert):
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def connect(
        self, *, name: str, servers: Sequence[str] | None = None
    ) -> AbstractAsyncContextManager[Connection]:
        """``connect()`` to *servers* (default: ``self.servers``) with these credentials,
        reconnecting forever (every half second) after the first connection."""
        return connect(
            list(self.servers if servers is None else servers),
            name=name,
            user=self.user,
            password=self.password,
            token=self.token,
            nkeys_seed=self.nkeys_seed,
            creds=self.creds,
            tls=self.tls_context(),
            reconnect_wait=0.5,
            max_reconnect_attempts=-1,
        )


_STORAGE_TYPES = {"file": StorageType.FILE, "memory": StorageType.MEMORY}


def parse_storage_type_option(value: object, bad: BadOption) -> StorageType:
    """``storage``: ``"file"`` or ``"memory"``, JetStream's storage type for a bucket."""
    if not isinstance(value, str) or value not in _STORAGE_TYPES:
        raise bad("storage", "the string 'file' or 'memory'")
    return _STORAGE_TYPES[value]


def parse_servers_option(
    value: object, bad: BadOption, *, allow_empty: bool = True
) -> tuple[str, ...]:
    """``servers``: one URL, comma-separated URLs, or a list of URLs."""
    servers = value
    if isinstance(servers, str):
        servers = [s for s in (p.strip() for p in servers.split(",")) if s]
    if (
        not isinstance(servers, list | tuple)
        or not (servers or allow_empty)
        or not all(isinstance(s, str) and s.strip() for s in servers)
    ):
        raise bad("servers", "a server URL or a list of them")
    return tuple(s.strip() for s in servers)


def parse_connect_options(
    options: Mapping[str, Any], bad: BadOption, *, allow_empty_servers: bool = True
) -> dict[str, Any]:
    """The :class:`ConnectOptions` fields set in *options*, validated (``bad`` makes the
    error for a key)."""
    kwargs: dict[str, Any] = {}
    if "servers" in options:
        kwargs["servers"] = parse_servers_option(
            options["servers"], bad, allow_empty=allow_empty_servers
        )
    for key in _CREDENTIALS:
        if key in options:
            if not isinstance(options[key], str) or not options[key]:
                raise bad(key, "a non-empty string")
            kwargs[key] = options[key]
    if "tls_key" in kwargs and "tls_cert" not in kwargs:
        raise bad("tls_key", "given together with 'tls_cert'")
    return kwargs


def unreachable_error(section: str, servers: Sequence[str], exc: NatsConnectionError) -> Exception:
    """The error for a provider whose servers cannot be reached at start (*exc*), as a
    :class:`~trio_grains.ConfigError` telling what to do; authorization errors are kept."""
    if isinstance(exc, AuthorizationError):
        return exc
    return ConfigError(
        f"{section} cannot reach a NATS server at {', '.join(servers)} ({exc}): start "
        f"nats-server (with JetStream: nats-server -js), or set {section} options servers "
        "to where it runs"
    )
