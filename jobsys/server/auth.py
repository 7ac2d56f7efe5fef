"""Who is calling, and may they: bearer tokens checked before any route runs.

`Authenticate` (ASGI middleware) answers every request but the open paths
(`/healthz`, the console's sign-in page and static files) with 401 unless it
carries ``Authorization: Bearer TOKEN`` of a live token, before a byte of its
body is read and before any route runs: a refused call does nothing. It also
counts the token's request rate and the failed logins of the client's
address (429 past either). The caller is left in the request's state; a
route then asks for a scope with ``Depends(require(Scope.X))`` (403 when the
token's scope does not grant it) and checks the pipeline of any job it
touches with `reach` (403).

On the web console's paths (everything outside ``/api/``) the token may
instead come from the sign-in cookie (`jobsys.server.session`); an unsafe
request so authenticated must carry the sign-in's CSRF token (403
otherwise, checked here too, so no console route can forget it). A browser
that is not signed in is sent to the sign-in page; other refusals on console
paths are HTML pages when a browser asks for HTML (`pages`).

Tokens are never logged: a failure names the client's address and the
token's fingerprint when there is one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import Request
from starlette.datastructures import Headers
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from jobsys.server import session
from jobsys.server.limits import Limiter, RateLimited
from jobsys.server.problems import PageRenderer, classify, headers_for, response_for
from jobsys.server.tokens import Forbidden, Principal, Unauthenticated, authenticate
from jobsys.server.tokens import Scope as TokenScope

log = logging.getLogger(__name__)

# Paths anyone may call: a load balancer's health check, the console's sign-in.
OPEN_PATHS = frozenset({"/healthz", "/signin"})
# Path prefixes anyone may read: the console's script and style sheet.
OPEN_PREFIXES = ("/static/",)
# Where a request's caller is kept (request.state.principal), and the CSRF
# token of a console sign-in (request.state.csrf).
STATE_KEY = "principal"
CSRF_KEY = "csrf"
SIGNIN_PATH = "/signin"


def is_open(path: str) -> bool:
    """Whether `path` needs no token."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer(headers: Headers) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; raises Unauthenticated."""
    value = headers.get("authorization")
    if value is None:
        raise Unauthenticated("no token: send Authorization: Bearer TOKEN")
    kind, _, token = value.strip().partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be Bearer TOKEN")
    return token.strip()


def presented_token(headers: Headers, path: str) -> tuple[str, bool]:
    """The token a request presents and whether it came from the console's cookie (only
    on console paths, and only without an Authorization header); raises Unauthenticated."""
    if headers.get("authorization") is None and session.is_console_path(path):
        token = session.signed_in_token(headers)
        if token is not None:
            return token, True
    return bearer(headers), False


def signin_redirect(path: str, query: str, clear: bool) -> Response:
    """Send a browser to the sign-in page, back to `path` afterwards."""
    back = path + (f"?{query}" if query else "")
    response = RedirectResponse(f"{SIGNIN_PATH}?{urlencode({'next': back})}", status_code=303)
    if clear:
        for name in (session.SECURE_COOKIE, session.COOKIE):
            response.delete_cookie(name, path="/", secure=name == session.SECURE_COOKIE)
    return response


class Authenticate:
    """ASGI middleware: every call but the open paths carries a live token (a bearer
    header, or on console paths the sign-in cookie and, for a change, its CSRF token)."""

    def __init__(self, app: ASGIApp, limiter: Limiter, pages: PageRenderer | None = None) -> None:
        self.app = app
        self.limiter = limiter
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        headers = Headers(scope=scope)
        from_cookie = False
        try:
            self.limiter.check_failures(client)
            try:
                token, from_cookie = presented_token(headers, scope["path"])
                principal = await anyio.to_thread.run_sync(authenticate, token)
            except Unauthenticated as exc:
                self.limiter.failed(client)
                log.warning("authentication failed", extra={"client": client, "reason": str(exc)})
                raise
            self.limiter.token_request(principal.fingerprint)
            if from_cookie and scope["method"] not in session.SAFE_METHODS:
                receive = await session.check_csrf(headers, receive, token)
        except Exception as exc:
            if isinstance(exc, RateLimited):
                log.warning("rate limited", extra={"client": client, "reason": str(exc)})
            response = self.refusal(exc, scope, headers, from_cookie)
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[STATE_KEY] = principal
        if from_cookie:
            state[CSRF_KEY] = session.csrf_token(token)
        await self.app(scope, receive, send)

    def refusal(
        self, exc: BaseException, scope: Scope, headers: Headers, from_cookie: bool
    ) -> Response:
        """How a refused request is answered: a browser not signed in (or whose sign-in
        ended) goes to the sign-in page; a browser on a console path gets an HTML page;
        anything else a problem document."""
        path = scope["path"]
        browser = self.pages is not None and session.wants_page(headers, path)
        if isinstance(exc, Unauthenticated) and browser and scope["method"] in ("GET", "HEAD"):
            return signin_redirect(path, scope.get("query_string", b"").decode("latin-1"),
                                   clear=from_cookie)  # fmt: skip
        known = classify(exc)
        if browser and self.pages is not None and known is not None:
            status, kind, detail = known
            return self.pages(status, kind, detail, path, headers_for(exc))
        return response_for(exc, path)


def caller(request: Request) -> Principal:
    """The authenticated caller of a request (set by `Authenticate`)."""
    principal = getattr(request.state, STATE_KEY, None)
    if not isinstance(principal, Principal):
        # Only reachable if a route is mounted outside the middleware: refuse.
        raise Unauthenticated("no token: send Authorization: Bearer TOKEN")
    return principal


def require(needed: TokenScope) -> Callable[[Request], Principal]:
    """A dependency: the caller, if its token's scope grants `needed` (else 403)."""

    def dependency(request: Request) -> Principal:
        principal = caller(request)
        if not principal.grants(needed):
            raise Forbidden(
                f"token {principal.name} ({principal.scope}) may not make {needed} calls"
            )
        return principal

    return dependency


def reach(principal: Principal, pipeline: str, what: str) -> None:
    """Raise Forbidden unless the caller's token reaches jobs of `pipeline`."""
    if not principal.reaches(pipeline):
        raise Forbidden(f"token {principal.name} does not reach {what}")
