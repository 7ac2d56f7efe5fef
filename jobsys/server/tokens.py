"""API tokens: made, listed, revoked and checked; only their hashes are stored.

A token is ``jst_`` and 43 URL-safe characters (32 random bytes). It is
shown once, by `create_token`; Postgres keeps its SHA-256 (a fast hash is
enough for 256 random bits) and a fingerprint, the first 16 hex digits of
that hash, which names the token in job events, listings and logs.

Scopes nest: ``admin`` may do what ``submit`` may, and ``submit`` what
``read`` may; ``process`` (remote processors) is apart from all three, so a
processor's token can read or change no job through the jobs API, and no
other token can take work as a processor. A token given pipelines touches
only jobs of those pipelines (a ``process`` token must be given them; an
``admin`` token cannot be).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg

from jobsys.errors import InvalidInput, JobsysError
from jobsys.pg.db import connection
from jobsys.pg.queries import Q

# What every token starts with: tells a reader (and a secret scanner, and
# jobsys's log redaction, jobsys.display) what it is.
TOKEN_PREFIX = "jst_"
TOKEN_BYTES = 32
# The exact shape of a token; anything else is refused without a database lookup.
TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}$")
FINGERPRINT_CHARS = 16
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_PIPELINE_CHARS = 500
MAX_PIPELINES = 100
MAX_EXPIRES_DAYS = 3_650
# A token's last use is written at most this often (one write a minute per
# busy client, not one per request).
TOUCH_EVERY_S = 60.0


class Scope(StrEnum):
    """What a token may do."""

    READ = "read"
    SUBMIT = "submit"
    PROCESS = "process"
    ADMIN = "admin"


# For each scope a token holds, the scopes of the calls it may make.
GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.SUBMIT: frozenset({Scope.READ, Scope.SUBMIT}),
    Scope.ADMIN: frozenset({Scope.READ, Scope.SUBMIT, Scope.ADMIN}),
    Scope.PROCESS: frozenset({Scope.PROCESS}),
}


class Unauthenticated(JobsysError):
    """No token, or one that is unknown, revoked or expired (HTTP 401)."""


class Forbidden(JobsysError):
    """A good token asking for more than its scope or pipelines allow (HTTP 403)."""


class TokenNotFound(JobsysError):
    """No live token has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no live token named {name!r}")


@dataclass(frozen=True)
class TokenInfo:
    """A token as `jobsys token list` shows it (never the token, never its hash)."""

    name: str
    scope: Scope
    pipelines: tuple[str, ...] | None
    fingerprint: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TokenInfo:
        """Build from a row of the token queries."""
        pipelines = row["pipelines"]
        return cls(
            name=row["name"],
            scope=Scope(row["scope"]),
            pipelines=tuple(pipelines) if pipelines is not None else None,
            fingerprint=row["fingerprint"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
        )

    def state(self, now: datetime) -> str:
        """live, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "live"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """The JSON shape (`jobsys token list --json`, `GET /api/tokens`)."""
        return {
            "name": self.name,
            "scope": str(self.scope),
            "pipelines": list(self.pipelines) if self.pipelines is not None else None,
            "fingerprint": self.fingerprint,
            "state": self.state(now),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


@dataclass(frozen=True)
class Principal:
    """Who is calling: an authenticated token, as the server acts for it."""

    name: str
    scope: Scope
    pipelines: frozenset[str] | None
    fingerprint: str
    expires_at: datetime | None = None

    def grants(self, needed: Scope) -> bool:
        """May this token make a call of scope `needed`?"""
        return needed in GRANTS[self.scope]

    def reaches(self, pipeline: str) -> bool:
        """May this token touch a job of `pipeline`?"""
        return self.pipelines is None or pipeline in self.pipelines

    @property
    def actor(self) -> dict[str, str]:
        """How its actions are signed in job events: the fingerprint (never the token)
        and the name."""
        return {"token": self.fingerprint, "name": self.name}


def new_token() -> str:
    """A fresh random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def fingerprint_of(token: str) -> str:
    """The name of a token that may be shown anywhere."""
    return token_hash(token).hex()[:FINGERPRINT_CHARS]


def parse_pipelines(text: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"a,b"`` (or a sequence) -> ("a", "b"); None -> None (every pipeline)."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not names:
        raise InvalidInput("pipelines: give at least one pipeline name")
    if len(names) > MAX_PIPELINES:
        raise InvalidInput(f"pipelines: at most {MAX_PIPELINES} per token")
    for name in names:
        if len(name) > MAX_PIPELINE_CHARS or "\x00" in name or "," in name:
            raise InvalidInput(f"pipelines: {name[:40]!r}... is not a pipeline name")
    return names


def check_new_token(
    name: str, scope: str, pipelines: Sequence[str] | None, expires_days: float | None
) -> Scope:
    """Validate what `create_token` is asked to make; its scope."""
    if not NAME_RE.match(name):
        raise InvalidInput(
            "name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    try:
        held = Scope(scope)
    except ValueError:
        raise InvalidInput(
            f"scope: {scope!r} is not one of {', '.join(s.value for s in Scope)}"
        ) from None
    if held is Scope.PROCESS and pipelines is None:
        raise InvalidInput("pipelines: a process token must name the pipelines it serves")
    if held is Scope.ADMIN and pipelines is not None:
        raise InvalidInput("pipelines: an admin token reaches every pipeline; give none")
    if expires_days is not None and not 0 < expires_days <= MAX_EXPIRES_DAYS:
        raise InvalidInput(f"expires-days: must be more than 0 and at most {MAX_EXPIRES_DAYS}")
    return held


def create_token(
    name: str,
    scope: str,
    pipelines: str | Sequence[str] | None = None,
    expires_days: float | None = None,
) -> tuple[str, TokenInfo]:
    """Make a token; returns it (the only time it exists outside its holder) and what
    is stored of it. Raises InvalidInput (also when a live token has this name)."""
    names = parse_pipelines(pipelines)
    held = check_new_token(name, scope, names, expires_days)
    token = new_token()
    digest = token_hash(token)
    params = {
        "name": name,
        "scope": held.value,
        "pipelines": list(names) if names is not None else None,
        "token_hash": digest,
        "fingerprint": digest.hex()[:FINGERPRINT_CHARS],
        "expires_days": expires_days,
    }
    try:
        with connection() as conn:
            row = conn.execute(Q.insert_token, params).fetchone()
    except psycopg.errors.UniqueViolation:
        raise InvalidInput(
            f"name: a live token named {name!r} exists (revoke it first: "
            f"`jobsys token revoke {name}`)"
        ) from None
    assert row is not None
    return token, TokenInfo.from_row(row)


def list_tokens(include_revoked: bool = True) -> list[TokenInfo]:
    """Every token, live first, newest first."""
    with connection() as conn:
        rows = conn.execute(Q.list_tokens, {"include_revoked": include_revoked}).fetchall()
    return [TokenInfo.from_row(r) for r in rows]


def revoke_token(name: str) -> TokenInfo:
    """Stop the live token called `name` from working, at once; raises TokenNotFound."""
    with connection() as conn:
        row = conn.execute(Q.revoke_token, {"name": name}).fetchone()
    if row is None:
        raise TokenNotFound(name)
    return TokenInfo.from_row(row)


def authenticate(token: str) -> Principal:
    """The caller a presented token stands for; raises Unauthenticated (and touches
    the database only for a token of the right shape)."""
    if not TOKEN_RE.match(token):
        raise Unauthenticated("not a jobsys token")
    with connection() as conn:
        row = conn.execute(
            Q.authenticate_token,
            {"token_hash": token_hash(token), "touch_every_s": TOUCH_EVERY_S},
        ).fetchone()
    if row is None:
        raise Unauthenticated("unknown token")
    if row["revoked_at"] is not None:
        raise Unauthenticated(f"token {row['fingerprint']} was revoked")
    if not row["usable"]:
        raise Unauthenticated(f"token {row['fingerprint']} expired")
    pipelines = row["pipelines"]
    return Principal(
        name=row["name"],
        scope=Scope(row["scope"]),
        pipelines=frozenset(pipelines) if pipelines is not None else None,
        fingerprint=row["fingerprint"],
        expires_at=row["expires_at"],
    )
