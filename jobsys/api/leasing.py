"""What the task gateway asks Postgres: the jobs remote processors may serve, a job's
serving terms, and the events that sign what a token leased and reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jobsys.errors import JobNotFound
from jobsys.pg.db import connection
from jobsys.pg.events import actor, record_event
from jobsys.pg.queries import Q
from jobsys.settings import get_settings

# Jobs one claim names at most.
MAX_CLAIMED = 100


@dataclass(frozen=True)
class Terms:
    """What a processor needs to serve a job (as a native one reads its stream's description)."""

    job_id: int
    pipeline: str
    status: str
    max_deliver: int
    task_timeout_s: float
    # Its share of slots (a remote processor orders its slots by them too).
    priority: int = 0
    weight: int = 1
    # The job's own rate limit (tasks per second) and retry delay, if it has them.
    rate_per_s: float | None = None
    retry_delay_s: float | None = None
    retry_delay_max_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of a claim's job."""
        return {
            "job_id": self.job_id,
            "pipeline": self.pipeline,
            "max_deliver": self.max_deliver,
            "task_timeout_s": self.task_timeout_s,
            "priority": self.priority,
            "weight": self.weight,
        }


def _terms(row: dict[str, Any], status: str) -> Terms:
    settings = get_settings()
    return Terms(
        job_id=row["id"],
        pipeline=row["pipeline"],
        status=status,
        max_deliver=row["max_deliver"] or settings.max_deliver,
        task_timeout_s=row["task_timeout_s"] or settings.task_timeout_s,
        priority=row.get("priority", 0),
        weight=row.get("weight", 1),
        rate_per_s=row.get("rate_per_s"),
        retry_delay_s=row.get("retry_delay_s"),
        retry_delay_max_s=row.get("retry_delay_max_s"),
    )


def claimable_jobs(pipelines: Iterable[str], limit: int = MAX_CLAIMED) -> list[Terms]:
    """Started jobs of `pipelines`, highest priority first, then least recently
    progressed."""
    with connection() as conn:
        rows = conn.execute(
            Q.claimable_jobs, {"pipelines": sorted(pipelines), "limit": limit}
        ).fetchall()
    return [_terms(r, "started") for r in rows]


def job_terms(job_id: int) -> Terms:
    """The job's serving terms and status; raises JobNotFound."""
    with connection() as conn:
        row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    return _terms(row, row["status"])


def note(job_id: int, event: str, by: dict[str, str], **detail: Any) -> None:
    """An event of the job signed by the token that did it (its fingerprint and name)."""
    with connection() as conn:
        record_event(conn, job_id, event, "info", **actor(by), **detail)
