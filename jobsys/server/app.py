"""The ASGI app of `jobsys serve`: routers, middleware, the OpenAPI document.

`create_app` builds it from the settings; uvicorn calls it once per worker
process (`jobsys.server.run`). A request goes through, outermost first:

1. `SecurityHeaders`: no response is cached, sniffed or framed, and pages
   run only the console's own script (Content-Security-Policy);
2. `jobsys.server.auth.Authenticate`: a live bearer token (or on the
   console's pages the sign-in cookie, and its CSRF token for a change), its
   rate (401/429 before anything runs);
3. `jobsys.server.limits.BodyLimit`: the body's size as it is read (413);
4. the routers, each route asking for its scope (403) — `ROUTERS`, then the
   web console's (`jobsys.server.console`).

Errors become problem details (`jobsys.server.problems`), or HTML pages for
a browser on the console. More routers plug in by adding to `ROUTERS` (each
declares its routes with `jobsys.server.routes.api`, which puts its scope in
the document); work that lives as long as the server (connections,
background tasks such as the console's shared refresh) goes into `lifespan`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobsys.api.overview import live_jobs
from jobsys.dramatiq.broker import setup_broker
from jobsys.dramatiq.signing import SecretMissing, require_secret
from jobsys.pg.db import close_pool, get_pool
from jobsys.server import admin, console, jobs, work
from jobsys.server.auth import Authenticate
from jobsys.server.console.live import Hub
from jobsys.server.console.render import error_page
from jobsys.server.gateway import Gateway
from jobsys.server.limits import BodyLimit, Limiter
from jobsys.server.problems import Problem, problem_response
from jobsys.server.problems import install as install_problems
from jobsys.server.routes import SCOPE_KEY
from jobsys.server.tokens import GRANTS
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

TITLE = "jobsys"
API_VERSION = "1"
# The routers of the app, in the order their routes are matched.
ROUTERS: list[APIRouter] = [jobs.router, admin.router, work.router]
# How long /healthz waits for a Postgres connection before it says the server is degraded.
HEALTH_TIMEOUT_S = 2.0


# What a console page may load and run: its own script and style sheet, nothing
# inline, no eval, no plugin, no other site; it may be framed by no page and
# its forms may post only to this server.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """ASGI middleware: answers are never cached by a proxy or browser, never sniffed,
    never framed; pages run only the console's own script."""

    HEADERS = {
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-frame-options": "DENY",
        "referrer-policy": "same-origin",
    }

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """What the server holds while it runs: the Dramatiq broker it sends with (only
    sends: no maintenance, so its Redis user needs nothing else), a Postgres pool,
    and the console's shared refresh (idle while no page is open), and the task
    gateway (jobsys.server.gateway; it connects to NATS in the background, so the
    rest of the API serves while NATS is away)."""
    setup_broker(maintenance=False)
    gateway = app.state.gateway = _gateway(app.state.settings)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(app.state.hub.run)
        if gateway is not None:
            tasks.start_soon(gateway.start)
        yield
        tasks.cancel_scope.cancel()
    if gateway is not None:
        await gateway.close()
    await anyio.to_thread.run_sync(close_pool)


def _gateway(settings: Settings) -> Gateway | None:
    """The task gateway, if there is a secret to make lease handles with."""
    try:
        return Gateway(settings, require_secret(settings))
    except SecretMissing as exc:
        log.warning("task gateway off", extra={"reason": str(exc)})
        return None


def _healthy() -> bool:
    try:
        with get_pool().connection(timeout=HEALTH_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except Exception:
        return False
    return True


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app, configured from `settings` (default: the environment's)."""
    settings = settings or get_settings()
    app = FastAPI(
        title=TITLE,
        version=API_VERSION,
        summary="Fan-out batch jobs with exact counts: the HTTP API of `jobsys serve`.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    install_problems(app, pages=error_page)
    limiter = Limiter(settings)
    app.state.limiter = limiter
    app.state.settings = settings
    app.state.hub = Hub(settings.console_refresh_s, live_jobs)

    @app.get("/healthz", tags=["health"], openapi_extra={SCOPE_KEY: "none", "security": []})
    async def healthz() -> JSONResponse:
        """Whether the server can reach Postgres; needs no token (for load balancers)."""
        if await anyio.to_thread.run_sync(_healthy):
            return JSONResponse({"status": "ok"})
        return problem_response(503, "unavailable", "Postgres not reachable from the server",
                                "/healthz")  # fmt: skip

    for router in ROUTERS:
        app.include_router(router)
    for router in console.ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=console.STATIC_DIR), name="static")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The OpenAPI document (any live token)."""
        return JSONResponse(openapi_document(app))

    # Added innermost first: the last added sees a request first.
    app.add_middleware(
        BodyLimit,
        max_body=settings.serve_max_body_bytes,
        max_upload=settings.serve_max_upload_bytes,
    )
    app.add_middleware(Authenticate, limiter=limiter, pages=error_page)
    app.add_middleware(SecurityHeaders)
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document: FastAPI's, with the bearer scheme, the scopes, and
    problem details in place of FastAPI's validation error shape."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=_description(),
        routes=app.routes,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Problem"] = Problem.model_json_schema()
    schemas["SubmitBody"] = jobs.SubmitBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "Unprocessable Content",
                    "content": {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}},
                }  # fmt: skip
    app.openapi_schema = doc
    return doc


def _description() -> str:
    grants = "; ".join(
        f"`{held}`: {', '.join(sorted(s.value for s in can))}" for held, can in GRANTS.items()
    )
    return (
        "Every call but `/healthz` needs `Authorization: Bearer TOKEN` "
        "(`jobsys token create`). Each operation's `x-jobsys-scope` is the scope it needs; "
        f"what each token scope may call: {grants}. A token limited to pipelines reaches "
        "only jobs of those. Errors are problem details (RFC 9457)."
    )
