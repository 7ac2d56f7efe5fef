"""Who processes: what the console's processors page shows.

Workers and native processors (NATS and Redis, no token) announce
themselves every few seconds in the namespace's presence bucket
(`jobsys.nats.presence`, what `jobsys processors` lists): host, pid,
version, slots, the jobs each serves, the pipelines it can serve and those
it refused with the reason; alive, stopped, or gone when not seen for a
while. Remote processors are known by their `process` tokens: each call
they make is a heartbeat (`last_used_at`, written at most once a minute,
`jobsys.server.tokens.TOUCH_EVERY_S`), so a token used within ONLINE_S is
online.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobsys.display import one_line
from jobsys.nats.presence import Member, members, now
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
    # Workers and native processors as they announce themselves (alive first).
    members: list[dict[str, Any]]
    remote: list[Remote]
    # Why the members could not be read (NATS not reachable), if so.
    error: str | None = None


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


def member_view(member: Member, at: datetime) -> dict[str, Any]:
    """One announced member as the page shows it."""
    return {
        **member.model_dump(),
        "condition": member.condition(at),
        "seen_ago": member.seen_ago(at),
        # What it may run: pipeline names, and module prefixes (JOBSYS_PIPELINE_MODULES).
        "serves": [*member.pipelines, *(f"{m}.*" for m in member.modules)],
    }


def look() -> Seen:
    """What the processors page shows now (one look at the presence bucket, one query)."""
    at = now()
    tokens = [t for t in list_tokens(include_revoked=False) if t.scope is Scope.PROCESS]
    remote = sorted((remote_of(t, at) for t in tokens), key=lambda r: (not r.online, r.name))
    try:
        team = members()
    except Exception as exc:
        return Seen(at, [], remote, f"NATS not reachable: {one_line(exc)}")
    order = {"alive": 0, "stopped": 1, "gone": 2}
    shown = sorted(
        (member_view(m, at) for m in team),
        key=lambda m: (order[m["condition"]], m["kind"], m["host"], m["pid"]),
    )
    return Seen(at, shown, remote)
