"""Who processes: what the console's processors page shows.

Remote processors are known by their `process` tokens: each call they make
is a heartbeat (`last_used_at`, written at most once a minute,
`jobsys.server.tokens.TOUCH_EVERY_S`), so a token used within ONLINE_S is
online. Native workers and processors (NATS and Redis, no token) announce
themselves in the presence registry of issue 22 (`jobsys.nats.presence`);
until that is on main, `members` returns None and the page says where they
will appear — the page fills in when `members` is wired to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobsys.server.tokens import TOUCH_EVERY_S, Scope, TokenInfo, list_tokens

# A remote processor whose token was used this recently is online (its
# last use is written at most every TOUCH_EVERY_S).
ONLINE_S = 2 * TOUCH_EVERY_S + 30


@dataclass(frozen=True)
class Remote:
    """A remote processor, known by its token."""

    name: str
    pipelines: tuple[str, ...]
    fingerprint: str
    last_seen: datetime | None
    online: bool
    state: str  # live, expired or revoked


@dataclass(frozen=True)
class Seen:
    """Everything the page shows."""

    at: datetime
    # Native workers and processors as they announce themselves; None when this
    # server cannot know them (no presence registry).
    members: list[dict[str, Any]] | None
    remote: list[Remote]


def remote_of(info: TokenInfo, now: datetime) -> Remote:
    """A `process` token as a remote processor."""
    seen = info.last_used_at
    state = info.state(now)
    return Remote(
        name=info.name,
        pipelines=info.pipelines or (),
        fingerprint=info.fingerprint,
        last_seen=seen,
        online=state == "live" and seen is not None and (now - seen).total_seconds() < ONLINE_S,
        state=state,
    )


def members() -> list[dict[str, Any]] | None:
    """Native workers and processors (host, pid, version, slots, jobs served, pipelines
    served and refused with the reason, last seen); None while no presence registry
    exists to read them from."""
    return None


def look() -> Seen:
    """What the processors page shows now."""
    now = datetime.now(UTC)
    tokens = [t for t in list_tokens(include_revoked=False) if t.scope is Scope.PROCESS]
    remote = sorted((remote_of(t, now) for t in tokens), key=lambda r: (not r.online, r.name))
    return Seen(at=now, members=members(), remote=remote)
