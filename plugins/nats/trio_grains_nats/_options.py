"""Connection options shared by the plugin's providers: servers, credentials, TLS.

Each provider's option parser validates these keys with :func:`parse_connect_options`
(errors are the provider's own :class:`~trio_grains.ConfigError`, naming the key), and its
config class inherits :class:`ConnectOptions` to connect with them.

Secrets are never printed: the repr of a config shows ``password``, ``token`` and
``nkeys_seed`` as ``'***'`` and server URLs as ``nats://user:***@host`` (attrs ``repr=``
on the fields, so every subclass inherits it), and neither the option errors nor
:func:`unreachable_error` quote them. ``creds`` and the TLS options are file paths, shown
as they are.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
from nats.js.api import StorageType

from trio_grains import ConfigError, remotable

from .client import AuthorizationError, Connection, NatsConnectionError, connect, redact_url
from .client import NatsError as _NatsError

# The client's errors are plain Exceptions (trio_grains_nats.client knows nothing of
# trio-grains). Marked remotable here, on the provider side that every provider imports, so a
# NatsError raised in a grain still reaches a caller on another silo as itself.
remotable(_NatsError)

__all__ = [
    "CONNECT_OPTIONS",
    "ConnectOptions",
    "parse_connect_options",
    "parse_servers_option",
    "unreachable_error",
]

_CREDENTIALS = ("user", "password", "token", "nkeys_seed", "creds", "tls_ca", "tls_cert", "tls_key")
_SECRETS = frozenset({"password", "token", "nkeys_seed"})  # never printed
_INBOX_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
CONNECT_OPTIONS = frozenset({"servers", "inbox_prefix", *_CREDENTIALS})
"""The option keys :func:`parse_connect_options` handles."""

BadOption = Callable[[str, str], ConfigError]
"""``bad(key, what)``: the provider's ConfigError for option *key*, which must be *what*."""


def _secret_repr(value: object) -> str:
    return "None" if value is None else "'***'"


def _servers_repr(servers: tuple[str, ...]) -> str:
    return repr(tuple(redact_url(url) for url in servers))


@attrs.frozen(kw_only=True)
class ConnectOptions:
    """Where and how to connect: servers, credentials and TLS files (all optional).

    Its repr (and its subclasses') hides the secrets: see the module's docstring."""

    servers: tuple[str, ...] = attrs.field(default=(), repr=_servers_repr)
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=_secret_repr)
    token: str | None = attrs.field(default=None, repr=_secret_repr)
    nkeys_seed: str | None = attrs.field(default=None, repr=_secret_repr)  # a seed or a path
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: where replies arrive (``<inbox_prefix>.<id>``): ``_INBOX`` unless a server's
    #: permissions give this user its own (``docs/security.md``)
    inbox_prefix: str = "_INBOX"

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
            inbox_prefix=self.inbox_prefix,
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
        value = options["servers"]
        kwargs["servers"] = parse_servers_option(
            value, _redacting(bad, value, _redacted_servers(value)), allow_empty=allow_empty_servers
        )
    for key in _CREDENTIALS:
        if key in options:
            value = options[key]
            if not isinstance(value, str) or not value:
                if key in _SECRETS and value != "":
                    raise _redacting(bad, value, "'***'")(key, "a non-empty string")
                raise bad(key, "a non-empty string")
            kwargs[key] = value
    if "tls_key" in kwargs and "tls_cert" not in kwargs:
        raise bad("tls_key", "given together with 'tls_cert'")
    if "inbox_prefix" in options:
        value = options["inbox_prefix"]
        if not isinstance(value, str) or not _INBOX_PREFIX.fullmatch(value):
            raise bad("inbox_prefix", "subject tokens of letters, digits, '-', '_' joined by '.'")
        kwargs["inbox_prefix"] = value
    return kwargs


def _redacted_servers(value: object) -> str:
    """The repr of a ``servers`` option value with the passwords of its URLs hidden."""
    if isinstance(value, str):
        return repr(redact_url(value))
    if isinstance(value, list | tuple):
        return repr(type(value)(redact_url(v) if isinstance(v, str) else v for v in value))
    return repr(value)


def _redacting(bad: BadOption, value: object, shown: str) -> BadOption:
    """*bad*, but its error shows *shown* where it would quote *value*.

    The providers' ``bad`` ends its message with ``got <repr of the value>``: a password
    given as a number, say, must not be printed there."""

    def redacting_bad(key: str, what: str) -> ConfigError:
        exc = bad(key, what)
        exc.args = tuple(
            _replace_last(arg, repr(value), shown) if isinstance(arg, str) else arg
            for arg in exc.args
        )
        return exc

    return redacting_bad


def _replace_last(text: str, old: str, new: str) -> str:
    head, sep, tail = text.rpartition(old)
    return f"{head}{new}{tail}" if sep else text


def unreachable_error(
    section: str, servers: Sequence[str], exc: NatsConnectionError
) -> ConfigError:
    """The error for a provider whose servers cannot be reached at start (*exc*, kept as
    the cause): a :class:`~trio_grains.ConfigError` telling what to do, whether the server
    was unreachable or refused the credentials. Passwords and tokens in the server URLs
    are not printed."""
    shown = ", ".join(redact_url(url) for url in servers)
    if isinstance(exc, AuthorizationError):
        return ConfigError(
            f"{section} was refused by the NATS server: {exc} (options of {section})"
        )
    return ConfigError(
        f"{section} cannot reach a NATS server at {shown} ({exc}): start "
        f"nats-server (with JetStream: nats-server -js), or set {section} options servers "
        "to where it runs"
    )
