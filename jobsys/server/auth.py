"""Who is calling, and may they: bearer tokens checked before any route runs.

`Authenticate` (ASGI middleware) answers every request but the open paths
(`/healthz`) with 401 unless it carries ``Authorization: Bearer TOKEN`` of a
live token, before a byte of its body is read and before any route runs:
a refused call does nothing. It also counts the token's request rate and the
failed logins of the client's address (429 past either). The caller is left
in the request's state; a route then asks for a scope with
``Depends(require(Scope.X))`` (403 when the token's scope does not grant it)
and checks the pipeline of any job it touches with `reach` (403).

Tokens are never logged: a failure names the client's address and the
token's fingerprint when there is one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio.to_thread
from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from jobsys.server.limits import Limiter, RateLimited
from jobsys.server.problems import response_for
from jobsys.server.tokens import Forbidden, Principal, Unauthenticated, authenticate
from jobsys.server.tokens import Scope as TokenScope

log = logging.getLogger(__name__)

# Paths anyone may call: a load balancer's health check.
OPEN_PATHS = frozenset({"/healthz"})
# Where a request's caller is kept (request.state.principal).
STATE_KEY = "principal"


def bearer(headers: Headers) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; raises Unauthenticated."""
    value = headers.get("authorization")
    if value is None:
        raise Unauthenticated("no token: send Authorization: Bearer TOKEN")
    kind, _, token = value.strip().partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be Bearer TOKEN")
    return token.strip()


class Authenticate:
    """ASGI middleware: every call but the open paths carries a live token."""

    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        try:
            self.limiter.check_failures(client)
            try:
                principal = await anyio.to_thread.run_sync(
                    authenticate, bearer(Headers(scope=scope))
                )
            except Unauthenticated as exc:
                self.limiter.failed(client)
                log.warning("authentication failed", extra={"client": client, "reason": str(exc)})
                raise
            self.limiter.token_request(principal.fingerprint)
        except Exception as exc:
            if isinstance(exc, RateLimited):
                log.warning("rate limited", extra={"client": client, "reason": str(exc)})
            response = response_for(exc, scope["path"])
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = principal
        await self.app(scope, receive, send)


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
