"""Reading jobs: one job, recent jobs, a job's hook delivery, waiting for a job to end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from jobsys.errors import InvalidInput, JobNotFound, WaitTimedOut
from jobsys.lifecycle.states import FINAL, Status
from jobsys.models import JobView
from jobsys.pg.db import connection
from jobsys.pg.finals import watching_final
from jobsys.pg.queries import Q


def get_job(job_id: int) -> JobView:
    """The job's status and counters; raises JobNotFound."""
    with connection() as conn:
        row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    return JobView.from_row(row)


def list_jobs(
    status: str | None = None, limit: int = 50, *, pipelines: Iterable[str] | None = None
) -> list[JobView]:
    """Recent jobs, newest first, optionally of one status and of some pipelines only."""
    if status is not None and status not in {s.value for s in Status}:
        raise InvalidInput(f"unknown status {status!r}")
    only = sorted(pipelines) if pipelines is not None else None
    with connection() as conn:
        rows = conn.execute(
            Q.list_jobs, {"status": status, "limit": limit, "pipelines": only}
        ).fetchall()
    return [JobView.from_row(r) for r in rows]


def hook_state(job_id: int) -> dict[str, Any] | None:
    """A job's hook delivery as `jobsys status` shows it; None when it has none yet."""
    with connection() as conn:
        row = conn.execute(Q.get_hook, {"job_id": job_id}).fetchone()
    return dict(row) if row is not None else None


def wait_until_final(
    job_id: int,
    timeout: float | None = 600.0,
    poll_s: float = 0.25,
    on_update: Callable[[JobView], object] | None = None,
) -> JobView:
    """Wait until the job is final and return it: woken by its final notice
    (jobsys.pg.finals), else at the next poll. `on_update(view)` is called on
    every read (every `poll_s` at least). Raises WaitTimedOut (a TimeoutError)
    after `timeout` seconds (None: never)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with watching_final(job_id) as went_final:
        while True:
            view = get_job(job_id)
            if on_update is not None:
                on_update(view)
            if view.status in FINAL:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimedOut(job_id, view.status, timeout or 0.0)
            # Cleared before the next read: that read sees whatever woke it
            # (a notice goes on commit), and a stray notice wakes it only once.
            went_final.wait(poll_s)
            went_final.clear()
