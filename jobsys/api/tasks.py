"""Listing a job's failed (or lost, cancelled...) tasks with their errors: `jobsys tasks`.

How many there are comes from the job's counter columns (no count over the
ledger); the listing reads the ledger in task order up to a limit, and the
grouping by cause reads the job's ledger once (distinct error texts, counted
by Postgres), then groups them by exception type and normalised message
(jobsys.api.error_groups).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from jobsys.api.error_groups import normalise_message
from jobsys.api.export import expected_counts
from jobsys.api.statuses import status_list
from jobsys.errors import InvalidInput, JobNotFound, LedgerPruned
from jobsys.models import JobView
from jobsys.pg.db import connection
from jobsys.pg.queries import Q

MAX_LIMIT = 100_000


@dataclass(frozen=True)
class TaskRow:
    """One task as `jobsys tasks` shows it."""

    task: int
    status: str
    error: str | None
    deliveries: int
    finished_at: datetime | None
    origin_task: int | None
    # A pending task that failed transiently: when NATS delivers it again and
    # why its last delivery failed (as its processor reported; else None).
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    # A failure an exception said: its class and traceback (cut).
    error_type: str | None = None
    error_trace: str | None = None


@dataclass(frozen=True)
class ErrorGroup:
    """Tasks failed for one cause: one exception type and one normalised message."""

    error: str  # the message normalised (what varies between tasks taken out)
    tasks: int
    example_task: int
    statuses: list[str]
    error_type: str | None = None
    example_error: str = ""  # the example task's own error text


@dataclass(frozen=True)
class TaskListing:
    """The answer of `list_tasks` / `group_errors`."""

    job_id: int
    statuses: tuple[str, ...]
    count: int  # tasks of these statuses in the job (its counters)
    tasks: list[TaskRow] | None = None
    errors: list[ErrorGroup] | None = None
    distinct_errors: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The `--json` shape."""
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "statuses": list(self.statuses),
            "count": self.count,
        }
        if self.tasks is not None:
            out["tasks"] = [asdict(t) for t in self.tasks]
        if self.errors is not None:
            out["distinct_errors"] = self.distinct_errors
            out["errors"] = [asdict(g) for g in self.errors]
        return out


def _job(conn: Any, job_id: int) -> JobView:
    row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    job = JobView.from_row(row)
    if job.ledger_state != "kept":
        raise LedgerPruned(job_id, job.ledger_pruned_at)
    return job


def _check(statuses: Iterable[str], limit: int) -> tuple[str, ...]:
    wanted = status_list(statuses)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit: must be 1 to {MAX_LIMIT:,}")
    return wanted


def list_tasks(job_id: int, statuses: Iterable[str] = ("failed",), limit: int = 50) -> TaskListing:
    """Up to `limit` of the job's tasks of `statuses`, in task order, with their errors."""
    wanted = _check(statuses, limit)
    with connection() as conn:
        job = _job(conn, job_id)
        rows = conn.execute(
            Q.list_tasks, {"job_id": job_id, "statuses": list(wanted), "limit": limit}
        ).fetchall()
    counters = expected_counts(job)
    tasks = [
        TaskRow(r["task_no"], r["status"], r["error"], r["deliveries"], r["finished_at"],
                r["origin_task"],
                r["next_attempt_at"] if r["status"] == "pending" else None,
                r["last_error"] if r["status"] == "pending" else None,
                r["error_type"], r["error_trace"])
        for r in rows
    ]  # fmt: skip
    return TaskListing(job_id, wanted, sum(counters[s] for s in wanted), tasks=tasks)


def group_errors(
    job_id: int, statuses: Iterable[str] = ("failed",), limit: int = 50
) -> TaskListing:
    """The job's tasks of `statuses` grouped by cause (exception type and normalised
    message), most frequent first, with one example task and its error each."""
    wanted = _check(statuses, limit)
    with connection() as conn:
        job = _job(conn, job_id)
        rows = conn.execute(Q.task_errors, {"job_id": job_id, "statuses": list(wanted)}).fetchall()
    counters = expected_counts(job)
    merged: dict[tuple[str | None, str], _Group] = {}
    for r in rows:
        key = (r["error_type"], normalise_message(r["error"]))
        group = merged.get(key)
        if group is None:
            group = merged[key] = _Group(r["example_task"], r["error"])
        group.add(r["status"], r["tasks"], r["example_task"], r["error"])
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1].tasks, kv[0][1], kv[0][0] or ""))
    groups = [
        ErrorGroup(message, g.tasks, g.example_task, sorted(g.statuses), error_type,
                   g.example_error)
        for (error_type, message), g in ranked[:limit]
    ]  # fmt: skip
    return TaskListing(
        job_id, wanted, sum(counters[s] for s in wanted), errors=groups,
        distinct_errors=len(merged),
    )  # fmt: skip


@dataclass
class _Group:
    example_task: int
    example_error: str
    tasks: int = 0
    statuses: set[str] = field(default_factory=set)

    def add(self, status: str, tasks: int, example_task: int, error: str) -> None:
        self.tasks += tasks
        self.statuses.add(status)
        if example_task < self.example_task:
            self.example_task, self.example_error = example_task, error
