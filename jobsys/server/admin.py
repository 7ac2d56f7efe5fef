"""The tokens API, ``/api/tokens`` (admin tokens), and ``/api/token`` (any token: itself).

The same operations as `jobsys token create|list|revoke`, through
`jobsys.server.tokens`. A token made here is in the response once and
nowhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from jobsys.server.auth import caller
from jobsys.server.routes import api
from jobsys.server.tokens import (
    MAX_EXPIRES_DAYS,
    Principal,
    Scope,
    create_token,
    list_tokens,
    revoke_token,
)

router = APIRouter(prefix="/api", tags=["tokens"])

Caller = Annotated[Principal, Depends(caller)]


class TokenOut(BaseModel):
    """A token as listed (never the token, never its hash)."""

    name: str
    scope: str
    pipelines: list[str] | None
    fingerprint: str
    state: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class NewToken(BaseModel):
    """What `POST /api/tokens` makes (`jobsys token create`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    scope: Scope
    pipelines: list[str] | None = None
    expires_days: float | None = Field(default=None, gt=0, le=MAX_EXPIRES_DAYS)


class Created(TokenOut):
    """A new token: the only time `token` is shown."""

    token: str


class Me(BaseModel):
    """The calling token."""

    name: str
    scope: str
    pipelines: list[str] | None
    fingerprint: str
    expires_at: str | None


def _now() -> datetime:
    return datetime.now(UTC)


@api(router.get, "/token", None, response_model=Me)
def me_route(who: Caller) -> Me:
    """The token this call was made with: its name, scope, pipelines and fingerprint."""
    return Me(
        name=who.name,
        scope=who.scope.value,
        pipelines=sorted(who.pipelines) if who.pipelines is not None else None,
        fingerprint=who.fingerprint,
        expires_at=who.expires_at.isoformat() if who.expires_at else None,
    )


@api(router.get, "/tokens", Scope.ADMIN, response_model=list[TokenOut])
def list_route() -> list[dict[str, Any]]:
    """Every token, live first (`jobsys token list`)."""
    now = _now()
    return [t.as_dict(now) for t in list_tokens()]


@api(router.post, "/tokens", Scope.ADMIN, 422, status_code=201, response_model=Created)
def create_route(body: NewToken) -> dict[str, Any]:
    """Make a token (`jobsys token create`); it is in this response and nowhere else."""
    token, info = create_token(body.name, body.scope.value, body.pipelines, body.expires_days)
    return {**info.as_dict(_now()), "token": token}


@api(router.delete, "/tokens/{name}", Scope.ADMIN, 404, response_model=TokenOut)
def revoke_route(name: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
    """Revoke the live token called `name` (`jobsys token revoke`): refused from its
    next request on."""
    return revoke_token(name).as_dict(_now())
