"""What the web console reads: pages of jobs, the live snapshot, progress over time,
events newest first, one task in full (sql/queries/overview.sql).

Every function is one statement (two for the chart) and none counts over a
job's ledger: counters come from the job rows, rates from the per-minute
rollup (`job_minutes`), so a page costs the same for a job of ten tasks or
of a million.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from jobsys.display import one_line
from jobsys.errors import InvalidInput
from jobsys.lifecycle.blocked import blocked_reason
from jobsys.lifecycle.states import ACTIVE as ACTIVE_STATUSES
from jobsys.lifecycle.states import Status
from jobsys.models import JobView
from jobsys.nats.presence import Member, members, now
from jobsys.pg.db import connection
from jobsys.pg.queries import Q

# Columns of `jobs` shown when the schema has them (a job's scheduling
# priority and weight): read through `j.*`, so they appear without a change here.
OPTIONAL_COLUMNS = ("priority", "weight")
# A status filter may also be "active" (queued, started or canceling).
ACTIVE = "active"
MAX_PAGE = 500
MAX_EVENTS = 1_000
# The chart covers at most this much of a job's life (its last part), at one
# point per minute of the rollup.
CHART_SPAN = timedelta(days=7)


@dataclass(frozen=True)
class JobLine:
    """A job as the console lists it: its row, retries, rate and ETA."""

    view: JobView
    children: int
    rate: float  # tasks finished per second over the last minute or two
    extra: dict[str, Any] = field(default_factory=dict)  # OPTIONAL_COLUMNS present

    @property
    def eta_s(self) -> float | None:
        """Seconds until every task is accounted for at the current rate (None: none)."""
        if self.view.status != Status.STARTED or self.rate <= 0:
            return None
        return self.view.pending / self.rate


@dataclass(frozen=True)
class Minute:
    """Tasks finished in one minute of a job's life."""

    minute: datetime
    done: int
    failed: int
    lost: int


@dataclass(frozen=True)
class Progress:
    """A job's progress over time: what was finished before `minutes` started, then
    minute by minute."""

    before: Minute
    minutes: list[Minute]


def line_from_row(row: dict[str, Any]) -> JobLine:
    """A console line from an `overview_*` row."""
    seconds = float(row["recent_s"])
    rate = int(row["recent_finished"]) / seconds if seconds > 0 else 0.0
    if row["status"] not in (Status.STARTED, Status.CANCELING):
        rate = 0.0
    return JobLine(
        view=JobView.from_row(row),
        children=int(row.get("children") or 0),
        rate=rate,
        extra={k: row[k] for k in OPTIONAL_COLUMNS if k in row},
    )


def check_status(status: str | None) -> str | None:
    """A status filter: None, "active" or a job status; InvalidInput otherwise."""
    if status is None or status == ACTIVE or status in {s.value for s in Status}:
        return status
    raise InvalidInput(f"status: {status!r} is not a job status or 'active'")


def recent_jobs(
    status: str | None = None,
    search: str | None = None,
    before: int | None = None,
    limit: int = 50,
    *,
    pipelines: Iterable[str] | None = None,
) -> list[JobLine]:
    """A page of jobs, newest first: of `status` ("active" for any active one), whose
    name contains `search` or whose id it is, with ids below `before`."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: must be 1 to {MAX_PAGE}")
    params = {
        "status": check_status(status),
        "search": search.strip() if search and search.strip() else None,
        "before": before,
        "limit": limit,
        "pipelines": sorted(pipelines) if pipelines is not None else None,
    }
    with connection() as conn:
        rows = conn.execute(Q.overview_jobs, params).fetchall()
    return [line_from_row(r) for r in rows]


def one_job(job_id: int) -> JobLine | None:
    """One job as the console shows it; None if there is no such job."""
    with connection() as conn:
        row = conn.execute(Q.overview_one_job, {"job_id": job_id}).fetchone()
    return line_from_row(row) if row is not None else None


def live_jobs(recent_s: float) -> list[JobLine]:
    """Every active job and every job finished in the last `recent_s` seconds, in one
    statement (what the console's shared refresh reads), each active one with why it
    is blocked, judged from one look at who runs (`judge_blocked`)."""
    with connection() as conn:
        rows = conn.execute(Q.overview_live, {"recent_s": recent_s}).fetchall()
    return judge_blocked([line_from_row(r) for r in rows])


def team_now() -> list[Member] | str:
    """The workers and processors that announced themselves, or why they cannot be seen."""
    try:
        return members()
    except Exception as exc:
        return f"cannot see workers and processors: NATS not reachable ({one_line(exc)})"


def judge_blocked(lines: list[JobLine], team: list[Member] | str | None = None) -> list[JobLine]:
    """`lines` with each active job's `blocked` reason (jobsys.lifecycle.blocked), from
    one look at the presence bucket for all of them (`team`, read if not given)."""
    if not any(line.view.status in ACTIVE_STATUSES for line in lines):
        return lines
    seen = team_now() if team is None else team
    at = now()
    out = []
    for line in lines:
        if line.view.status in ACTIVE_STATUSES:
            why = seen if isinstance(seen, str) else blocked_reason(
                line.view.job_id, line.view.status, seen, at)  # fmt: skip
            line = replace(line, view=line.view.model_copy(update={"blocked": why}))
        out.append(line)
    return out


def progress(job_id: int, since: datetime) -> Progress:
    """The job's finished tasks per minute from `since` (at most CHART_SPAN back from
    now), and what was finished before."""

    def minute(row: dict[str, Any], at: datetime) -> Minute:
        return Minute(at, int(row["done"]), int(row["failed"]), int(row["lost"]))

    params = {"job_id": job_id, "since": since}
    with connection() as conn:
        before = conn.execute(Q.overview_minutes_before, params).fetchone()
        rows = conn.execute(Q.overview_minutes, params).fetchall()
    assert before is not None
    return Progress(minute(before, since), [minute(r, r["minute"]) for r in rows])


def recent_events(
    job_id: int, before: int | None = None, after: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    """The job's events newest first: below `before`, above `after`."""
    if not 1 <= limit <= MAX_EVENTS:
        raise InvalidInput(f"limit: must be 1 to {MAX_EVENTS}")
    params = {"job_id": job_id, "before": before, "after": after, "limit": limit}
    with connection() as conn:
        rows = conn.execute(Q.overview_events, params).fetchall()
    return [dict(r) for r in rows]


def task_detail(job_id: int, task_no: int) -> dict[str, Any] | None:
    """One task's ledger row in full, its payload and result as stored text; None if
    the job has no such task (or its ledger was pruned)."""
    with connection() as conn:
        row = conn.execute(Q.overview_task, {"job_id": job_id, "task_no": task_no}).fetchone()
    if row is None:
        return None
    task = dict(row)
    task.pop("payload", None)
    task.pop("result", None)
    return task
