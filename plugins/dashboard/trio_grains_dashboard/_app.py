"""The dashboard's ASGI application (Starlette, which runs on Trio through anyio).

Routes: ``GET /`` the page (``static/index.html``, shipped as package data: no CDN, no
download), ``GET /metrics`` the Prometheus text exposition, ``GET /api/stats`` the same
figures as JSON plus the cluster membership view. With a token, :class:`BearerAuth`
guards every route: ``Authorization: Bearer <token>`` or ``?token=<token>``, else 401.

Without a token (the service allows that on a loopback address only), :class:`LoopbackHosts`
answers only requests whose ``Host`` is a loopback name or address (``localhost``,
``127.0.0.1``, ``[::1]``, with any port), else 421. A loopback address alone does not stop
a web page from reading the dashboard: by *DNS rebinding*, a name the page's site controls
(``evil.example``) is re-pointed at 127.0.0.1 after the page loads, and the browser, seeing
the same origin, lets the page read the answers. Its requests still carry
``Host: evil.example``, which is what the check refuses.
"""

from __future__ import annotations

import hmac
import importlib.resources
import ipaddress
import re
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from trio_grains import Silo

from ._prometheus import CONTENT_TYPE
from ._stats import snapshot_json, snapshot_prometheus, take_snapshot

__all__ = ["BearerAuth", "LoopbackHosts", "is_loopback", "make_app", "page_html"]

_NO_STORE = {"Cache-Control": "no-store"}
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_PORT = re.compile(r"[0-9]{1,5}")


def is_loopback(host: str) -> bool:
    """Whether *host* (a name or address) only accepts connections from this machine."""
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to a reachable address


def is_loopback_host_header(value: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback: ``localhost``,
    ``127.0.0.1`` (any 127.x address), ``[::1]``, each with or without ``:port``."""
    host = value.strip()
    if host.startswith("["):  # [IPv6]:port
        address, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return False
        host = address
    elif host.count(":") == 1:  # name:port or IPv4:port
        host, _, port = host.partition(":")
        if not _PORT.fullmatch(port):
            return False
    return bool(host) and is_loopback(host)


def page_html() -> str:
    """The dashboard page, from the package data."""
    return (
        importlib.resources.files("trio_grains_dashboard")
        .joinpath("static/index.html")
        .read_text(encoding="utf-8")
    )


class BearerAuth:
    """ASGI middleware: HTTP requests must carry *token* (``Authorization: Bearer`` or the
    ``token`` query parameter); others get 401. Other scopes (lifespan) pass through."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    def _allowed(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credentials.strip()):
            return True
        query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token")
        return given is not None and self._matches(given)

    def _matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = PlainTextResponse(
                "401 Unauthorized: this dashboard needs its token, as "
                "'Authorization: Bearer <token>' or '?token=<token>'\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="trio-grains"'},
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class LoopbackHosts:
    """ASGI middleware: HTTP requests whose ``Host`` is not a loopback name or address get
    421 (against DNS rebinding, see the module's docstring). Other scopes pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "")
            if not is_loopback_host_header(host):
                response = PlainTextResponse(
                    f"421 Misdirected Request: this dashboard has no token, so it answers "
                    f"only requests for localhost, 127.0.0.1 or [::1], not {host[:100]!r}; "
                    "open it by one of those names, or give it a token\n",
                    status_code=421,
                )
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


def make_app(
    silo: Silo, *, token: str | None = None, clock: Callable[[], float] = time.time
) -> ASGIApp:
    """The dashboard of *silo* as an ASGI application: guarded by *token* if given, else
    answering only requests for a loopback host name (:class:`LoopbackHosts`)."""
    page = page_html()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=_NO_STORE)

    async def metrics(request: Request) -> Response:
        text = snapshot_prometheus(take_snapshot(silo, now=clock()))
        return Response(text, media_type=CONTENT_TYPE, headers=_NO_STORE)

    async def stats(request: Request) -> Response:
        return JSONResponse(snapshot_json(take_snapshot(silo, now=clock())), headers=_NO_STORE)

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/stats", stats, methods=["GET"]),
        ]
    )
    return LoopbackHosts(app) if token is None else BearerAuth(app, token)
