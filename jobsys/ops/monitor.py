"""Live read-only views of the jobs, for `jobsys top` and `jobsys exporter`.

One query per look (sql/queries/monitor.sql): counters from the job rows,
rates from the per-minute rollup, the reconciler's latest word per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobsys.pg.db import connection
from jobsys.pg.queries import Q


@dataclass(frozen=True)
class ActiveJob:
    """One active job as the live views show it."""

    job_id: int
    name: str
    pipeline: str
    status: str
    total: int
    done: int
    failed: int
    lost: int
    cancelled: int
    age_s: float
    # Tasks finished over the last `recent_s` seconds (the previous and the
    # current minute of the rollup, from the job's start at the earliest).
    recent_finished: int
    recent_s: float
    finding: str | None = None
    finding_action: str | None = None
    finding_at: datetime | None = None
    # Its share of the processors' slots (jobsys.api.share).
    priority: int = 0
    weight: int = 1
    # Started, and every pending task waits for its next delivery after a
    # transient failure (jobsys.lifecycle.blocked.WAITING_FOR_RETRY).
    waits_for_retry: bool = False

    @property
    def settled(self) -> int:
        """Tasks no longer pending."""
        return self.done + self.failed + self.lost + self.cancelled

    @property
    def pending(self) -> int:
        """Tasks still to be accounted for."""
        return max(self.total - self.settled, 0)

    @property
    def rate(self) -> float:
        """Tasks finished per second, over the last minute or so."""
        return self.recent_finished / self.recent_s if self.recent_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds until every task is accounted for at the current rate (None: no rate)."""
        if self.status != "started" or self.rate <= 0:
            return None
        return self.pending / self.rate


@dataclass(frozen=True)
class Snapshot:
    """What one look at the database saw."""

    jobs: list[ActiveJob]
    active: int  # all active jobs; `jobs` may hold fewer (a limit)


def _job(row: dict[str, Any]) -> ActiveJob:
    return ActiveJob(
        job_id=row["id"],
        name=row["name"],
        pipeline=row["pipeline"],
        status=row["status"],
        total=row["total"],
        done=row["done"],
        failed=row["failed"],
        lost=row["lost"],
        cancelled=row["cancelled"],
        age_s=float(row["age_s"]),
        recent_finished=int(row["recent_finished"]),
        recent_s=float(row["recent_s"]),
        finding=row["finding"],
        finding_action=row["finding_action"],
        finding_at=row["finding_at"],
        priority=row.get("priority", 0),
        weight=row.get("weight", 1),
        waits_for_retry=bool(row.get("waits_for_retry")),
    )


def active_jobs(limit: int | None = None) -> Snapshot:
    """The active jobs (oldest first, at most `limit`), in one query."""
    with connection() as conn:
        rows = conn.execute(Q.monitor_active_jobs, {"limit": limit}).fetchall()
    return Snapshot([_job(r) for r in rows], int(rows[0]["active"]) if rows else 0)


def jobs_by_status() -> dict[str, int]:
    """How many jobs are in each status."""
    with connection() as conn:
        rows = conn.execute(Q.monitor_jobs_by_status).fetchall()
    return {r["status"]: int(r["jobs"]) for r in rows}
