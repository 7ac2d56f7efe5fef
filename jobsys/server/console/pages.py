"""The console's pages: jobs, one job (overview, failures, a task, events, NATS and the
ledger), results downloads, processors, and the live stream that keeps them current.

Each page needs a token that grants `read` and reaches the job's pipeline
(the same `require`/`reach` as the API), and calls the same library
functions as the CLI and the API. Page routes are not in the OpenAPI
document (they are not an API). What each page reads is one or a few
statements that do not grow with a job's size: counters from the job row,
rates from the per-minute rollup; only the failures page and the ledger
audit read a job's ledger (the failed tasks, and every task).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse

from jobsys.api.export import EXPORT_STATUSES, open_export
from jobsys.api.formats import MEDIA_TYPES
from jobsys.api.overview import (
    ACTIVE,
    CHART_SPAN,
    JobLine,
    judge_blocked,
    one_job,
    progress,
    recent_events,
    recent_jobs,
    task_detail,
)
from jobsys.api.read import hook_state
from jobsys.api.retry import retries_of
from jobsys.api.statuses import parse_statuses
from jobsys.api.tasks import group_errors
from jobsys.display import redact
from jobsys.errors import JobNotFound
from jobsys.lifecycle.states import FINAL, Status
from jobsys.reconciler.inspect import inspect_job
from jobsys.server.auth import caller, reach, require
from jobsys.server.console import processors
from jobsys.server.console.chart import progress_chart
from jobsys.server.console.live import Hub, event_stream
from jobsys.server.console.render import page
from jobsys.server.stream import chunks_in_threads, open_in_thread
from jobsys.server.tokens import Principal, Scope

router = APIRouter(include_in_schema=False, dependencies=[Depends(require(Scope.READ))])

Caller = Annotated[Principal, Depends(caller)]
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]
PER_PAGE = 50
# Events shown on a job's overview, and per page of its log.
OVERVIEW_EVENTS = 8
EVENTS_PAGE = 100
# Error groups shown on the failures page.
FAILURE_GROUPS = 50
# How long the job page waits for NATS before it shows NATS as not readable.
NATS_TIMEOUT_S = 2.0
# How often a page in follow mode asks for new events (the script reads it).
EVENTS_POLL_S = 3.0
STATUSES = [ACTIVE, *(s.value for s in Status)]


class TaskNotFound(JobNotFound):
    """The job has no such task (or its ledger was pruned): HTTP 404."""

    def __init__(self, job_id: int, task_no: int) -> None:
        super().__init__(job_id)
        self.args = (f"job {job_id} has no task {task_no} (or its ledger was pruned)",)


def job_line(who: Principal, job_id: int) -> JobLine:
    """The job as the console shows it, if the caller's token reaches its pipeline."""
    line = one_job(job_id)
    if line is None:
        raise JobNotFound(job_id)
    reach(who, line.view.pipeline, f"job {job_id}'s pipeline")
    return line


@router.get("/", response_class=RedirectResponse)
def home() -> RedirectResponse:
    """The console starts at the jobs list."""
    return RedirectResponse("/jobs", status_code=303)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    who: Caller,
    status: Annotated[str | None, Query(max_length=20)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> HTMLResponse:
    """Recent jobs, newest first: filter by status, search by name (or id), paged."""
    status = status or None  # the form's "any status" is empty
    lines = recent_jobs(status, q, before, PER_PAGE + 1, pipelines=who.pipelines)
    more = len(lines) > PER_PAGE
    lines = judge_blocked(lines[:PER_PAGE])
    optional = sorted({k for line in lines for k in line.extra})
    return page(
        request, "jobs.html", lines=lines, status=status, q=q or "", before=before,
        next_before=lines[-1].view.job_id if more and lines else None,
        statuses=STATUSES, optional=optional, live=True,
    )  # fmt: skip


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, who: Caller, job_id: JobId) -> HTMLResponse:
    """A job: counters, progress over time, why it is blocked, lineage, its hook,
    NATS beside the database, its latest events and what may be done with it."""
    line = judge_blocked([job_line(who, job_id)])[0]
    view = line.view
    now = datetime.now(UTC)
    start = view.started_at or view.created_at
    end = view.finished_at or now
    since = max(start, end - CHART_SPAN)
    # The rollup counts whole minutes: read from the one `since` falls in.
    minute = since.replace(second=0, microsecond=0)
    chart = progress_chart(progress(job_id, minute), view.total, since, end)
    hook = hook_state(job_id)
    if hook is not None and hook.get("target"):
        hook["target"] = redact(hook["target"])
    inspected = inspect_job(job_id, findings=3, audit_ledger=False, nats_timeout_s=NATS_TIMEOUT_S)
    return page(
        request, "job.html", line=line, job=view, chart=chart, hook=hook,
        on_complete=redact(view.on_complete) if view.on_complete else None,
        children=retries_of(job_id), blocked=view.blocked,
        nats=inspected["nats"], findings=inspected["findings"],
        events=recent_events(job_id, limit=OVERVIEW_EVENTS), final=view.status in FINAL,
        tab="overview", live=view.status not in FINAL,
    )  # fmt: skip


@router.get("/jobs/{job_id}/failures", response_class=HTMLResponse)
def failures_page(
    request: Request,
    who: Caller,
    job_id: JobId,
    status: Annotated[str, Query(max_length=100)] = "failed,lost",
) -> HTMLResponse:
    """A job's failed and lost tasks grouped by error, most frequent first, each with an
    example task (its error, traceback and payload)."""
    line = job_line(who, job_id)
    statuses = parse_statuses(status)
    assert statuses is not None
    listing = group_errors(job_id, statuses, FAILURE_GROUPS)
    groups = []
    for group in listing.errors or []:
        example = task_detail(job_id, group.example_task)
        groups.append({**vars(group), "example": example})
    return page(
        request, "failures.html", line=line, job=line.view, listing=listing, groups=groups,
        status=status, tab="failures", live=False,
    )  # fmt: skip


@router.get("/jobs/{job_id}/tasks/{task_no}", response_class=HTMLResponse)
def task_page(
    request: Request,
    who: Caller,
    job_id: JobId,
    task_no: Annotated[int, Path(ge=0, le=2**31 - 1)],
) -> HTMLResponse:
    """One task in full: status, deliveries, payload, result, error and traceback."""
    line = job_line(who, job_id)
    task = task_detail(job_id, task_no)
    if task is None:
        raise TaskNotFound(job_id, task_no)
    return page(request, "task.html", line=line, job=line.view, task=task, tab="failures",
                live=False)  # fmt: skip


@router.get("/jobs/{job_id}/events", response_class=HTMLResponse)
def events_page(
    request: Request,
    who: Caller,
    job_id: JobId,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> HTMLResponse:
    """A job's event log, newest first, paged; follow mode adds new ones as they come."""
    line = job_line(who, job_id)
    events = recent_events(job_id, before=before, limit=EVENTS_PAGE + 1)
    more = len(events) > EVENTS_PAGE
    events = events[:EVENTS_PAGE]
    return page(
        request, "events.html", line=line, job=line.view, events=events, before=before,
        next_before=events[-1]["id"] if more and events else None,
        newest=events[0]["id"] if events and before is None else 0,
        poll_s=EVENTS_POLL_S, tab="events", live=False,
    )  # fmt: skip


@router.get("/jobs/{job_id}/events.json")
def events_json(
    who: Caller,
    job_id: JobId,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> JSONResponse:
    """Events newer than `after`, newest first (follow mode; the page shows them as text)."""
    line = job_line(who, job_id)
    events = recent_events(job_id, after=after, limit=EVENTS_PAGE)
    return JSONResponse({
        "status": line.view.status,
        "events": [{"id": e["id"], "at": e["at"].isoformat(), "level": e["level"],
                    "event": e["event"], "detail": e["detail"]} for e in events],
    })  # fmt: skip


@router.get("/jobs/{job_id}/inspect", response_class=HTMLResponse)
def inspect_page(request: Request, who: Caller, job_id: JobId) -> HTMLResponse:
    """`jobsys inspect`: the counters, the ledger's own counts and NATS side by side,
    with the reconciler's latest findings (counting the ledger reads every task)."""
    line = job_line(who, job_id)
    inspected = inspect_job(job_id, audit_ledger=True, nats_timeout_s=NATS_TIMEOUT_S * 5)
    return page(request, "inspect.html", line=line, job=line.view, inspected=inspected,
                tab="inspect", live=False)  # fmt: skip


@router.get("/jobs/{job_id}/results.{fmt}", response_class=StreamingResponse)
async def results_download(
    who: Caller,
    job_id: JobId,
    fmt: Literal["jsonl", "csv"],
    status: Annotated[str, Query(max_length=100)] = "done",
    with_payload: bool = False,
) -> StreamingResponse:
    """A job's results as a file (`jobsys results`), streamed from one snapshot: the same
    bytes as ``GET /api/jobs/{id}/results``."""
    statuses = parse_statuses(status, EXPORT_STATUSES)
    await anyio.to_thread.run_sync(job_line, who, job_id)
    opening = open_export(job_id, statuses, with_payload=with_payload, raw=True)
    export = await open_in_thread(opening)
    headers = {"Content-Disposition": f'attachment; filename="job-{job_id}.{fmt}"'}
    if export.expected is not None:
        headers["Jobsys-Expected"] = ", ".join(f"{s}={n}" for s, n in export.expected.items())
    return StreamingResponse(chunks_in_threads(opening, export, fmt),
                             media_type=MEDIA_TYPES[fmt], headers=headers)  # fmt: skip


@router.get("/processors", response_class=HTMLResponse)
def processors_page(request: Request, who: Caller) -> HTMLResponse:
    """Who processes: workers and processors (native and remote), online or gone."""
    return page(request, "processors.html", seen=processors.look(), live=False)


@router.get("/live", response_class=StreamingResponse)
async def live(request: Request, who: Caller) -> StreamingResponse:
    """Server-sent events: the active and just-finished jobs' counters, from the shared
    refresh (`jobsys.server.console.live`)."""
    hub: Hub = request.app.state.hub
    sub = hub.subscribe(who.pipelines)
    return StreamingResponse(event_stream(hub, sub), media_type="text/event-stream",
                             headers={"X-Accel-Buffering": "no"})  # fmt: skip
