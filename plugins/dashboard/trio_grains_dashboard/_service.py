"""The dashboard service: options, and :func:`open_dashboard`, the factory the silo enters.

The HTTP server is Hypercorn's Trio worker (``hypercorn.trio.serve``), run in a nursery
the service owns; leaving the service sets the server's shutdown trigger (idle
connections close at once, requests under way get ``graceful_timeout``) and waits for it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.trio import serve

from trio_grains import ConfigError
from trio_grains.hookspecs import ServiceContext

from ._app import is_loopback, make_app

__all__ = ["Dashboard", "DashboardOptions", "open_dashboard"]

log = logging.getLogger("trio_grains.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_GRACEFUL_TIMEOUT = 1.0  # seconds requests under way get when the silo stops


@attrs.frozen
class DashboardOptions:
    """``[services.<name>] provider = "dashboard"`` options, validated."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = attrs.field(default=None, repr=lambda t: "None" if t is None else "'***'")
    """Never printed: the repr shows ``'***'``."""

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> DashboardOptions:
        where = f"[services.{name}.options]"
        known = {"host", "port", "token"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; the dashboard "
                f"understands {', '.join(sorted(known))}"
            )
        host = options.get("host", DEFAULT_HOST)
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(
                f'{where} host must be a host name or address such as "127.0.0.1", got {host!r}'
            )
        port = options.get("port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(
                f"{where} port must be an integer from 0 to 65535 (0 picks a free port), "
                f"got {port!r}"
            )
        token = options.get("token")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            # The value is not quoted: it is meant to be a secret.
            got = (
                "a blank string"
                if isinstance(token, str)
                else f"a value of type {type(token).__name__}"
            )
            raise ConfigError(
                f"{where} token must be a non-empty string (or leave it out on a loopback "
                f"host), got {got}"
            )
        if token is None and not is_loopback(host):
            raise ConfigError(
                f"{where}: the dashboard would listen on {host!r}, reachable from other "
                f'machines, without a token. Set token = "<a long random secret>" (e.g. '
                f"from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or "
                f'listen on host = "127.0.0.1"'
            )
        return cls(host=host.strip(), port=port, token=token)


class _QuietLogger(HypercornLogger):
    """Hypercorn's logger, less its "Running on ... (CTRL + C to quit)": the service logs
    its own URL, and Ctrl-C stops the silo, not the server."""

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        if not message.startswith("Running on "):
            await super().info(message, *args, **kwargs)


@attrs.frozen
class Dashboard:
    """What :func:`open_dashboard` yields: where it listens."""

    host: str
    port: int
    url: str  #: ``http://host:port/`` (without the token)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_error(exc: BaseException) -> OSError | None:
    """The OSError that kept the server from listening, if that is what *exc* is (the
    server's nurseries may wrap it in exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


def _check_can_listen(host: str, port: int) -> None:
    """Bind (host, port) as the server will, and let go: a port in use or a host that is
    not this machine's fails here, before the server starts (Hypercorn would leak the
    socket it failed to bind)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _cannot_listen(name: str, host: str, port: int, error: OSError) -> ConfigError:
    hint = (
        "another program (or silo) listens there: choose another port, or port = 0 for a free one"
        if error.errno == errno.EADDRINUSE
        else "check the host and port options"
    )
    return ConfigError(
        f"[services.{name}] the dashboard cannot listen on {_bind(host, port)}: "
        f"{error.strerror or error}; {hint}"
    )


@contextlib.asynccontextmanager
async def open_dashboard(
    context: ServiceContext, options: Mapping[str, Any]
) -> AsyncIterator[Dashboard]:
    """Serve the dashboard of ``context.silo`` while the block runs.

    The service factory registered as ``dashboard``; see ``docs/dashboard.md`` for the
    options. Raises :class:`~trio_grains.ConfigError` for bad options and when it cannot
    listen (port in use, unknown host).
    """
    settings = DashboardOptions.from_options(context.name, options)
    try:
        _check_can_listen(settings.host, settings.port)
    except OSError as error:
        raise _cannot_listen(context.name, settings.host, settings.port, error) from error
    app = make_app(context.silo, token=settings.token)
    config = HypercornConfig()
    config.bind = [_bind(settings.host, settings.port)]
    config.accesslog = None
    config.logger_class = _QuietLogger
    config.errorlog = logging.getLogger("trio_grains.dashboard.http")
    config.graceful_timeout = _GRACEFUL_TIMEOUT
    config.include_server_header = False
    stop = trio.Event()
    failure: OSError | None = None
    async with trio.open_nursery() as nursery:
        serving = partial(serve, app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        try:
            binds: list[str] = await nursery.start(serving)
        except BaseException as exc:
            failure = _listen_error(exc)
            if failure is None:
                raise
        else:
            port = int(binds[0].rsplit(":", 1)[1])
            url = f"http://{_bind(settings.host, port)}/"
            log.info(
                "dashboard %r of silo %s serving on %s%s",
                context.name,
                context.silo.name,
                url,
                " (pass the token: ?token=... or Authorization: Bearer)" if settings.token else "",
            )
            try:
                yield Dashboard(settings.host, port, url)
            finally:
                stop.set()
    if failure is not None:  # raised here, outside the nursery: a plain ConfigError
        raise _cannot_listen(context.name, settings.host, settings.port, failure) from failure
