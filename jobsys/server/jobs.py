"""The jobs API, ``/api/jobs``: what the CLI does, through the same library calls.

| call | CLI | library |
|---|---|---|
| ``GET /api/jobs`` | `jobsys list` | `jobsys.api.read.list_jobs` |
| ``POST /api/jobs`` | `jobsys submit` | `jobsys.api.submit.submit` |
| ``GET /api/jobs/{id}`` | `jobsys status` | `get_job`, `retries_of`, `hook_state` |
| ``POST /api/jobs/{id}/cancel`` | `jobsys cancel` | `jobsys.api.cancel.cancel` |
| ``POST /api/jobs/{id}/share`` | `jobsys set` | `jobsys.api.share.set_share` |
| ``POST /api/jobs/{id}/retry`` | `jobsys retry` | `jobsys.api.retry.retry` |
| ``GET /api/jobs/{id}/tasks`` | `jobsys tasks` | `list_tasks`, `group_errors` |
| ``GET /api/jobs/{id}/events`` | `jobsys logs` | `jobsys.pg.events.read_events` |
| ``GET /api/jobs/{id}/results`` | `jobsys results` | `jobsys.api.export.open_export` |

Reads need a `read` token, changes a `submit` token; a token limited to
some pipelines sees and touches only jobs of those (403 for another's).
What a token changes is signed with its fingerprint in the job's events.
Sync handlers run on FastAPI's thread pool (the library is synchronous);
the submit and the results stream bridge the event loop and a thread
(`jobsys.server.upload`, `jobsys.server.stream`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import partial
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobsys.api.cancel import cancel
from jobsys.api.export import EXPORT_STATUSES, open_export
from jobsys.api.formats import MEDIA_TYPES
from jobsys.api.items import counted_items
from jobsys.api.job import with_blocked
from jobsys.api.read import get_job, hook_state, list_jobs
from jobsys.api.retry import retries_of, retry
from jobsys.api.share import MAX_PRIORITY, MAX_WEIGHT, MIN_PRIORITY, MIN_WEIGHT, set_share
from jobsys.api.statuses import parse_statuses
from jobsys.api.submit import submit
from jobsys.api.tasks import MAX_LIMIT, group_errors, list_tasks
from jobsys.display import redact
from jobsys.errors import InvalidInput
from jobsys.lifecycle.states import Status
from jobsys.models import JobView
from jobsys.pg.events import read_events
from jobsys.server.auth import caller, reach
from jobsys.server.limits import UPLOAD_TYPES
from jobsys.server.problems import UnsupportedMediaType
from jobsys.server.routes import api
from jobsys.server.stream import chunks_in_threads, open_in_thread
from jobsys.server.tokens import Principal, Scope
from jobsys.server.upload import items_from_stream

router = APIRouter(prefix="/api", tags=["jobs"])

Caller = Annotated[Principal, Depends(caller)]
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]
MAX_LIST = 1_000
MAX_EVENTS = 10_000
# The `--count N` of a JSON submit, at most (an upload has no such bound).
MAX_COUNT = 10_000_000


class SubmitOptions(BaseModel):
    """A submit's options (the flags of `jobsys submit`)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=500)
    name: str = ""
    failure_threshold: float = 0.0
    max_deliver: int | None = None
    task_timeout_s: float | None = None
    max_in_flight: int | None = None
    on_complete: str | None = None
    # Strict: JSON's 1.5, "2", true or 1e400 are refused, not rounded.
    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)
    weight: int = Field(default=1, ge=MIN_WEIGHT, le=MAX_WEIGHT, strict=True)
    # As `jobsys submit --retry-delay BASE[,MAX]`: seconds, [base, max] or the
    # text; checked by jobsys.api.submit with the CLI's one-line messages.
    retry_delay: float | tuple[float, float] | str | None = None
    # As `--rate`: "20/s", "600/m", "3600/h" or tasks per second.
    rate: float | str | None = None


class SubmitBody(SubmitOptions):
    """``POST /api/jobs`` as JSON: the options and either `items` (one JSON object per
    task) or `count` (N tasks ``{"n": i}``)."""

    items: list[dict[str, Any]] | None = None
    count: int | None = Field(default=None, ge=0, le=MAX_COUNT)


class JobStatus(JobView):
    """A job as `jobsys status --json` shows it: its row, its retries and its hook."""

    retries: list[int] = []
    hook: dict[str, Any] | None = None


class Cancelled(BaseModel):
    """What a cancel did (`jobsys cancel --json`)."""

    job_id: int
    status: str
    changed: bool


class ShareBody(BaseModel):
    """A job's new share of the processors' slots (`jobsys set`): either or both."""

    model_config = ConfigDict(extra="forbid")

    priority: int | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)
    weight: int | None = Field(default=None, ge=MIN_WEIGHT, le=MAX_WEIGHT, strict=True)


class Shared(BaseModel):
    """What `jobsys set --json` prints: the job's share now and before."""

    job_id: int
    status: str
    priority: int
    weight: int
    was_priority: int
    was_weight: int


Retryable = Literal["failed", "lost", "cancelled"]


def _default_retry() -> list[Retryable]:
    return ["failed", "lost"]


class RetryBody(BaseModel):
    """Which tasks of a final job to re-run as a new job (`jobsys retry`)."""

    model_config = ConfigDict(extra="forbid")

    status: list[Retryable] = Field(default_factory=_default_retry, min_length=1)
    error_like: str | None = None


class Retried(BaseModel):
    """The job a retry made (`jobsys retry --json`)."""

    job_id: int
    parent_id: int
    root_id: int | None
    status: str
    total: int
    retried: dict[str, int]


class Event(BaseModel):
    """One event of a job's log."""

    id: int
    at: str
    level: str
    event: str
    detail: dict[str, Any]


class Events(BaseModel):
    """A page of a job's events; ask again with ``after=next_after`` for newer ones."""

    job_id: int
    events: list[Event]
    next_after: int


def shown(view: JobView) -> JobView:
    """A job as the API shows it: a hook URL's credentials hidden."""
    if view.on_complete is None:
        return view
    return view.model_copy(update={"on_complete": redact(view.on_complete)})


def reached_job(who: Principal, job_id: int) -> JobView:
    """The job, if the caller's token reaches its pipeline (JobNotFound, Forbidden)."""
    view = get_job(job_id)
    reach(who, view.pipeline, f"job {job_id}'s pipeline")
    return view


@api(router.get, "/jobs", Scope.READ, 422, response_model=list[JobView])
def list_route(
    who: Caller,
    status: Annotated[Status | None, Query(description="Only jobs of this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
) -> list[JobView]:
    """Recent jobs, newest first (`jobsys list`); only jobs of the token's pipelines."""
    views = list_jobs(status.value if status else None, limit, pipelines=who.pipelines)
    return [shown(v) for v in views]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_submit(raw: bytes) -> tuple[SubmitOptions, Iterable[str]]:
    """The options and the items (or count) of a JSON submit body."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput("body: nested too deeply to parse") from None
    except ValueError as exc:
        raise InvalidInput(f"body: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"body: expected a JSON object, got {type(data).__name__}")
    items = data.pop("items", None)
    count = data.pop("count", None)
    options = options_from(data)
    if (items is None) == (count is None):
        raise InvalidInput("body: give exactly one of items or count")
    if count is not None:
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            raise InvalidInput(f"count: must be a whole number from 0 to {MAX_COUNT:,}")
        return options, counted_items(count)
    if not isinstance(items, list):
        raise InvalidInput(f"items: expected a JSON array, got {type(items).__name__}")
    # Each item as JSON text, checked by the submit (`item N: problem`).
    return options, [json.dumps(item, ensure_ascii=False) for item in items]


def options_from(data: dict[str, Any]) -> SubmitOptions:
    """A submit's options from a mapping of them; InvalidInput names the first bad one."""
    try:
        return SubmitOptions.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]).replace("_", "-") or "body"
        raise InvalidInput(f"{where}: {first['msg']}") from None


SUBMIT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/SubmitBody"}},
        "application/x-ndjson": {
            "schema": {"type": "string", "format": "binary"},
            "description": "Items, one JSON object per line; the options as query parameters.",
        },
    },
}
UPLOAD_ONLY = "NDJSON uploads only (a JSON body carries it in the body)."
TASK_STATUSES_HELP = "failed, lost, cancelled, done, pending, or a comma list."
LATEST_HELP = "Each task's latest outcome across the job and its retries."


@api(router.post, "/jobs", Scope.SUBMIT, 413, 415, 422, status_code=201,
     response_model=JobView, openapi_extra={"requestBody": SUBMIT_BODY})  # fmt: skip
async def submit_route(
    request: Request,
    response: Response,
    who: Caller,
    pipeline: Annotated[str | None, Query(description=UPLOAD_ONLY)] = None,
    name: Annotated[str | None, Query(description=UPLOAD_ONLY)] = None,
    failure_threshold: Annotated[float | None, Query(description=UPLOAD_ONLY)] = None,
    max_deliver: Annotated[int | None, Query(description=UPLOAD_ONLY)] = None,
    task_timeout_s: Annotated[float | None, Query(description=UPLOAD_ONLY)] = None,
    max_in_flight: Annotated[int | None, Query(description=UPLOAD_ONLY)] = None,
    on_complete: Annotated[str | None, Query(description=UPLOAD_ONLY)] = None,
    priority: Annotated[int | None, Query(description=UPLOAD_ONLY)] = None,
    weight: Annotated[int | None, Query(description=UPLOAD_ONLY)] = None,
    retry_delay: Annotated[str | None, Query(description=UPLOAD_ONLY)] = None,
    rate: Annotated[str | None, Query(description=UPLOAD_ONLY)] = None,
) -> JobView:
    """Create a job (`jobsys submit`): a JSON body with its items (or a count), or its
    items uploaded as NDJSON (streamed into the job's ledger; options in the query).

    Every item is checked before the job exists; the first bad one is
    refused as ``item N: problem`` (JSON) or ``line N: problem`` (NDJSON) and
    no job is made.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = {
        "pipeline": pipeline, "name": name, "failure_threshold": failure_threshold,
        "max_deliver": max_deliver, "task_timeout_s": task_timeout_s,
        "max_in_flight": max_in_flight, "on_complete": on_complete,
        "priority": priority, "weight": weight, "retry_delay": retry_delay, "rate": rate,
    }  # fmt: skip
    given = {k: v for k, v in query.items() if v is not None}
    items: Iterable[str]
    if kind in UPLOAD_TYPES:
        options = options_from(given)
        items = items_from_stream(request.stream().__aiter__())
    elif kind == "application/json":
        if given:
            first = next(iter(given)).replace("_", "-")
            raise InvalidInput(
                f"{first}: give the options in the JSON body (query options are for NDJSON uploads)"
            )
        options, items = _json_submit(await request.body())
    else:
        raise UnsupportedMediaType(kind, ("application/json", "application/x-ndjson"))
    reach(who, options.pipeline, f"pipeline {options.pipeline!r}")
    run = partial(submit, options.pipeline, items, by=who.actor,
                  **options.model_dump(exclude={"pipeline"}))  # fmt: skip
    job = await anyio.to_thread.run_sync(run)
    view = await anyio.to_thread.run_sync(get_job, job.id)
    response.headers["Location"] = f"/api/jobs/{view.job_id}"
    return shown(view)


@api(router.get, "/jobs/{job_id}", Scope.READ, 404, 422, response_model=JobStatus)
def status_route(who: Caller, job_id: JobId) -> JobStatus:
    """A job's status and counters, its retries and its hook's delivery (`jobsys status`)."""
    view = shown(with_blocked(reached_job(who, job_id)))
    hook = hook_state(job_id)
    if hook is not None and hook.get("target"):
        hook["target"] = redact(hook["target"])
    return JobStatus(**view.model_dump(), retries=retries_of(job_id), hook=hook)


@api(router.post, "/jobs/{job_id}/cancel", Scope.SUBMIT, 404, 409, 422, response_model=Cancelled)
def cancel_route(who: Caller, job_id: JobId) -> Cancelled:
    """Cancel a job (`jobsys cancel`): its remote work stops and it ends `revoked`.
    A job that already finished is left as it is (``changed: false``)."""
    reached_job(who, job_id)
    done = cancel(job_id, by=who.actor)
    return Cancelled(job_id=done.job_id, status=done.status, changed=done.changed)


@api(router.post, "/jobs/{job_id}/share", Scope.SUBMIT, 404, 409, 422, response_model=Shared)
def share_route(who: Caller, job_id: JobId, body: ShareBody) -> Shared:
    """Change an active job's priority and/or weight (`jobsys set`); a final job is
    refused (422). The change is signed with the token in the job's events."""
    reached_job(who, job_id)
    done = set_share(job_id, priority=body.priority, weight=body.weight, by=who.actor)
    return Shared(
        job_id=done.job_id, status=done.status, priority=done.priority, weight=done.weight,
        was_priority=done.was_priority, was_weight=done.was_weight,
    )  # fmt: skip


@api(router.post, "/jobs/{job_id}/retry", Scope.SUBMIT, 404, 409, 410, 413, 422,
     status_code=201, response_model=Retried)  # fmt: skip
def retry_route(
    who: Caller, job_id: JobId, response: Response, body: RetryBody | None = None
) -> Retried:
    """Re-run a final job's failed and lost tasks as a new job linked to it (`jobsys retry`)."""
    asked = body or RetryBody()
    reached_job(who, job_id)
    made = retry(job_id, tuple(asked.status), asked.error_like, by=who.actor)
    view = made.job
    response.headers["Location"] = f"/api/jobs/{view.job_id}"
    return Retried(job_id=view.job_id, parent_id=made.parent_id, root_id=view.root_id,
                   status=view.status, total=view.total, retried=made.retried)  # fmt: skip


@api(router.get, "/jobs/{job_id}/tasks", Scope.READ, 404, 410, 422)
def tasks_route(
    who: Caller,
    job_id: JobId,
    status: Annotated[str, Query(description=TASK_STATUSES_HELP)] = "failed",
    by_error: Annotated[bool, Query(description="Group by error text.")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> dict[str, Any]:
    """A job's failed (or lost, ...) tasks with their errors, or grouped by error
    (`jobsys tasks`, `--by-error`)."""
    statuses = parse_statuses(status)
    assert statuses is not None
    reached_job(who, job_id)
    listing = (group_errors if by_error else list_tasks)(job_id, statuses, limit)
    return listing.as_dict()


@api(router.get, "/jobs/{job_id}/events", Scope.READ, 404, 422, response_model=Events)
def events_route(
    who: Caller,
    job_id: JobId,
    after: Annotated[int, Query(ge=0, description="Only events with a higher id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 1_000,
) -> Events:
    """A job's events, oldest first (`jobsys logs`)."""
    reached_job(who, job_id)
    rows = read_events(job_id, after, limit)
    events = [Event(id=r["id"], at=r["at"].isoformat(), level=r["level"], event=r["event"],
                    detail=r["detail"] or {}) for r in rows]  # fmt: skip
    return Events(job_id=job_id, events=events, next_after=events[-1].id if events else after)


RESULTS_CONTENT = {
    "description": "One task per line (NDJSON) or per row (CSV), in task order.",
    "content": {
        MEDIA_TYPES["jsonl"]: {"schema": {"type": "string"}},
        "text/csv": {"schema": {"type": "string"}},
    },
}


@api(router.get, "/jobs/{job_id}/results", Scope.READ, 404, 410, 422,
     response_class=StreamingResponse,
     openapi_extra={"responses": {"200": RESULTS_CONTENT}})  # fmt: skip
async def results_route(
    who: Caller,
    job_id: JobId,
    status: Annotated[str, Query(description="done, failed, lost, cancelled or all.")] = "done",
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
    with_payload: bool = False,
    latest: Annotated[bool, Query(description=LATEST_HELP)] = False,
) -> StreamingResponse:
    """Stream a job's tasks (`jobsys results`): task, status, result, error, deliveries,
    finished_at, error_type, error_trace (and payload), results and payloads byte for
    byte as stored.

    The header ``Jobsys-Expected`` gives the job's counters as of the export's
    snapshot: the rows sent, counted by status, equal them.
    """
    statuses = parse_statuses(status, EXPORT_STATUSES)
    await anyio.to_thread.run_sync(reached_job, who, job_id)
    opening = open_export(job_id, statuses, latest=latest, with_payload=with_payload, raw=True)
    export = await open_in_thread(opening)
    expected = export.expected
    headers = {"Content-Disposition": f'inline; filename="job-{job_id}.{format}"'}
    if expected is not None:
        headers["Jobsys-Expected"] = ", ".join(f"{s}={n}" for s, n in expected.items())
    return StreamingResponse(chunks_in_threads(opening, export, format),
                             media_type=MEDIA_TYPES[format], headers=headers)  # fmt: skip
