"""The job event log (`job_events`), mirrored to the structured log."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from jobsys.pg.db import Conn, connection
from jobsys.pg.queries import Q

log = logging.getLogger("jobsys.events")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _scrub(value: Any) -> Any:
    # jsonb cannot hold U+0000; event details are diagnostics, so show it escaped.
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def record_event(
    conn: Conn,
    job_id: int | None,
    event: str,
    level: str = "info",
    **detail: Any,
) -> None:
    """Append an event to `job_events` in the caller's transaction, and log it."""
    record_event_with(conn, Q.insert_event, {}, job_id, event, level, **detail)


def record_event_with(
    conn: Conn,
    query: str,
    params: Mapping[str, Any],
    job_id: int | None,
    event: str,
    level: str = "info",
    **detail: Any,
) -> None:
    """`record_event` by a statement that inserts the event as `insert_event` does
    (its parameters) and writes something more in the same round trip, with
    `params` for that (e.g. `set_job_total_with_event`)."""
    conn.execute(query, {**params, **event_params(job_id, event, level, **detail)})
    log_event(job_id, event, level, **detail)


def event_params(
    job_id: int | None, event: str, level: str = "info", **detail: Any
) -> dict[str, Any]:
    """The parameters of `insert_event` for an event (for a statement that inserts
    one besides other writes)."""
    return {
        "job_id": job_id,
        "level": level,
        "event": event,
        "detail": json.dumps(_scrub(detail), default=str),
    }


def log_event(job_id: int | None, event: str, level: str = "info", **detail: Any) -> None:
    """The structured-log twin of an event written to `job_events`."""
    log.log(_LEVELS.get(level, logging.ERROR), event, extra={"job_id": job_id, **detail})


def actor(by: Mapping[str, str] | None) -> dict[str, Any]:
    """The event detail naming who asked for a change (an API token's fingerprint
    and name), as ``record_event(..., **actor(by))``; nothing when nobody was named."""
    return {"by": dict(by)} if by else {}


def read_events(job_id: int, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """A job's events with an id above `after`, oldest first (`jobsys logs`)."""
    with connection() as conn:
        rows = conn.execute(
            Q.job_events, {"job_id": job_id, "after": after, "limit": limit}
        ).fetchall()
    return [dict(r) for r in rows]
