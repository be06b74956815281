"""The dashboard's ASGI application (Starlette, which runs on Trio through anyio).

Routes: ``GET /`` the page (``static/index.html``, shipped as package data: no CDN, no
download), ``GET /metrics`` the Prometheus text exposition, ``GET /api/stats`` the same
figures as JSON plus the cluster membership view. With a token, :class:`BearerAuth`
guards every route: ``Authorization: Bearer <token>`` or ``?token=<token>``, else 401.
"""

from __future__ import annotations

import hmac
import importlib.resources
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

__all__ = ["BearerAuth", "make_app", "page_html"]

_NO_STORE = {"Cache-Control": "no-store"}


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


def make_app(
    silo: Silo, *, token: str | None = None, clock: Callable[[], float] = time.time
) -> ASGIApp:
    """The dashboard of *silo* as an ASGI application (guarded by *token* if given)."""
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
    return app if token is None else BearerAuth(app, token)
