"""A job handle: what `jobsys.submit` and `jobsys.get` return.

A `Job` holds only the job's id; every method asks Postgres (the truth) afresh:

    job = jobsys.submit("mypkg.images:resize", ({"path": p} for p in paths))
    job.wait()                      # a progress bar; the final JobView
    for row in job.results():       # done tasks, one dict each, streamed
        ...
    for row in job.failures():      # failed and lost tasks, with their errors
        ...
    child = job.retry(statuses=["failed"])

Every method is also a function of the job id (`jobsys.get_job`,
`jobsys.results`, `jobsys.cancel`, `jobsys.retry`) for programs that keep ids.
`jobsys.aio` offers the same as coroutines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from jobsys.api.cancel import CancelResult, cancel
from jobsys.api.export import results
from jobsys.api.read import get_job, wait_until_final
from jobsys.api.retry import DEFAULT_RETRY, retry
from jobsys.errors import WaitTimedOut
from jobsys.lifecycle.blocked import BLOCKED_AFTER_S, why_blocked
from jobsys.models import JobView

# How often a waiting caller asks why a job does not move (it reads NATS).
BLOCKED_EVERY_S = 3.0
# What `failures()` lists.
FAILURES = ("failed", "lost")


class Job:
    """A handle on one job: its `id`, and methods that read or act on it now."""

    __slots__ = ("id",)

    def __init__(self, job_id: int) -> None:
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("jobsys.Job", self.id))

    def status(self) -> JobView:
        """The job now: status, counters, progress, and `blocked` (why it cannot move
        on, or None)."""
        return with_blocked(get_job(self.id))

    def wait(self, timeout: float | None = None, progress: bool = True) -> JobView:
        """Wait until the job is final and return it. `progress`: a progress bar on
        stderr (a notebook shows it too) saying why the job does not move when it
        does not. Raises WaitTimedOut (a TimeoutError) after `timeout` seconds."""
        return wait_for(self.id, timeout, progress)

    def results(self, status: str | Iterable[str] | None = "done") -> Iterator[dict[str, Any]]:
        """The job's tasks of `status` ("done"; a list for several; "all"), in task order,
        one dict each (task, status, result, error, deliveries, finished_at, error_type,
        error_trace), streamed."""
        return results(self.id, status)

    def failures(self) -> Iterator[dict[str, Any]]:
        """The job's failed and lost tasks, with their errors (`results` of those)."""
        return results(self.id, FAILURES)

    def cancel(self) -> CancelResult:
        """Stop the job's work and end it `revoked` (a final job is left as it is)."""
        return cancel(self.id)

    def retry(self, statuses: Iterable[str] = DEFAULT_RETRY, error_like: str | None = None) -> Job:
        """Re-run this final job's tasks of `statuses` (a list) as a new job; returns it."""
        return Job(retry(self.id, statuses, error_like).job.job_id)


def get(job_id: int) -> Job:
    """The handle of job `job_id`; raises JobNotFound if there is none."""
    get_job(job_id)
    return Job(job_id)


def with_blocked(view: JobView) -> JobView:
    """`view` with `blocked` filled in (one look at NATS unless the job is final)."""
    return view.model_copy(update={"blocked": why_blocked(view)})


# -- waiting, with a progress bar that says why nothing moves ---------------------


def wait_for(
    job_id: int,
    timeout: float | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> JobView:
    """`Job.wait` (and `jobsys watch`): poll until final; with `progress`, draw a bar
    whose text is the status, or once the job has not moved for BLOCKED_AFTER_S,
    why it cannot (`jobsys.lifecycle.blocked`)."""
    try:
        with progress_bar(job_id, progress, console) as on_update:
            return wait_until_final(job_id, timeout=timeout, on_update=on_update)
    except WaitTimedOut as exc:
        # Said with why the job does not move, when it cannot.
        raise WaitTimedOut(job_id, exc.status, exc.timeout, why_blocked(get_job(job_id))) from None


@contextmanager
def progress_bar(
    job_id: int, progress: bool = True, console: Console | None = None
) -> Iterator[Callable[[JobView], None] | None]:
    """A progress bar for a job being waited on: yields the `on_update(view)` to call on
    every look (None without `progress`)."""
    if not progress:
        yield None
        return
    with _bar(f"job {job_id}", console) as update:
        yield _describer(update)


def _describer(update: Callable[[JobView, str], None]) -> Callable[[JobView], None]:
    """An `on_update` that asks why the job is blocked at most every BLOCKED_EVERY_S,
    once it has not moved for BLOCKED_AFTER_S."""
    last_move = time.monotonic()
    last_settled = -1
    asked = 0.0
    reason: str | None = None

    def on_update(view: JobView) -> None:
        nonlocal last_move, last_settled, asked, reason
        now = time.monotonic()
        settled = view.total - view.pending
        if settled != last_settled:
            last_settled, last_move, reason = settled, now, None
        if now - last_move >= BLOCKED_AFTER_S and now - asked >= BLOCKED_EVERY_S:
            asked = now
            reason = why_blocked(view)
        update(view, f"{view.status}: {reason}" if reason else view.status)

    return on_update


@contextmanager
def _bar(description: str, console: Console | None) -> Iterator[Callable[[JobView, str], None]]:
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )
    with bar:
        task = bar.add_task(description, total=None, status="")

        def update(view: JobView, status: str) -> None:
            bar.update(task, completed=view.total - view.pending, total=view.total or None,
                       status=status)  # fmt: skip

        yield update
