"""The task gateway's API, ``/api/gateway``: work for remote processors (`process` tokens).

| call | what it does |
|---|---|
| ``POST /api/gateway/claim`` | the started jobs of some pipelines, to serve |
| ``POST /api/gateway/jobs/{id}/lease`` | up to N of the job's tasks, leased, with handles |
| ``POST /api/gateway/leases/extend`` | the caller's leases live on (a heartbeat) |
| ``POST /api/gateway/jobs/{id}/report`` | outcomes by handle: done, failed, handed back |
| ``POST /api/gateway/announce`` | the processor's presence, for `jobsys processors` |

Every call needs a `process` token, and a job of a pipeline the token does
not name is refused (403). In a report each item stands alone: an item whose
handle was not made by this server, names another job, or another task than
the item says, is refused with its reason and costs the others nothing.
Leases and reports are signed in the job's events with the token's
fingerprint (`tasks_leased`, `results_reported`). See jobsys.server.gateway
for what the server holds, and jobsys.server.leases for the handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobsys.api.leasing import MAX_CLAIMED, Terms, claimable_jobs, note
from jobsys.api.submit import MAX_RETRY_DELAY_S
from jobsys.dramatiq.signing import require_secret
from jobsys.errors import InvalidInput, ServiceUnavailable
from jobsys.models import TaskResult
from jobsys.nats.presence import Member, announce, open_bucket
from jobsys.processor.backoff import delay_terms, retry_delay_s
from jobsys.server.auth import caller, reach
from jobsys.server.gateway import Gateway
from jobsys.server.leases import MAX_HANDLE_CHARS, BadHandle, Handle, read_handle
from jobsys.server.routes import api
from jobsys.server.tokens import Forbidden, Principal, Scope
from jobsys.settings import Settings, get_settings
from jobsys.storable import storable_error

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/gateway", tags=["gateway"])

Caller = Annotated[Principal, Depends(caller)]
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]
# One extend or report names at most this many leases.
MAX_ITEMS = 10_000
# How long a lease call may wait for a first task, and a claim for a change.
MAX_WAIT_S = 10.0
MAX_CLAIM_WAIT_S = 30.0
# A waiting claim looks again this often even if no advisory woke it.
CLAIM_POLL_S = 1.0
ProcessorId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")]


def gateway(request: Request) -> Gateway:
    """This server process's gateway (503 until it is connected to NATS)."""
    gw = getattr(request.app.state, "gateway", None)
    if not isinstance(gw, Gateway) or not gw.ready:
        raise ServiceUnavailable("the task gateway is not ready (NATS, or JOBSYS_SECRET unset)")
    return gw


Gw = Annotated[Gateway, Depends(gateway)]


def holder_of(who: Principal, processor: str) -> str:
    """Who holds a lease: the token and the processor that asked."""
    return f"{who.fingerprint}/{processor}"


def secrets_of() -> list[bytes]:
    """The keys a handle may be made with: the secret, and the previous one."""
    s = get_settings()
    keys = [require_secret(s)]
    if s.secret_previous is not None and s.secret_previous.get_secret_value():
        keys.append(s.secret_previous.get_secret_value().encode("utf-8"))
    return keys


async def signed(job_id: int, event: str, who: Principal, **detail: Any) -> None:
    """The job's event of what the token did. Best effort: the tasks are leased (or
    the results queued) already, and failing the call for the event's sake (Postgres
    down) would only strand them until their lease lapses; the log says it instead."""
    try:
        await anyio.to_thread.run_sync(lambda: note(job_id, event, who.actor, **detail))
    except Exception as exc:
        log.warning("job event not written", extra={"job_id": job_id, "event": event,
                    "token": who.fingerprint, **detail, "error": repr(exc)})  # fmt: skip


# -- claim -----------------------------------------------------------------------


class ClaimBody(BaseModel):
    """Which pipelines the processor serves (none: every one its token names); the
    jobs it serves already, and how long to wait for that set to change."""

    model_config = ConfigDict(extra="forbid")

    pipelines: list[Annotated[str, Field(min_length=1, max_length=500)]] | None = Field(
        default=None, max_length=100
    )
    known: list[int] = Field(default_factory=list, max_length=MAX_CLAIMED)
    wait_s: float = Field(default=0.0, ge=0, le=MAX_CLAIM_WAIT_S)


@api(router.post, "/claim", Scope.PROCESS)
async def claim(body: ClaimBody, who: Caller, gw: Gw) -> dict[str, Any]:
    """The started jobs of the asked pipelines (least recently progressed first).
    With `wait_s`, a long poll: answered as soon as the jobs differ from `known`
    (a job started or ended), at the latest after `wait_s`."""
    asked = set(body.pipelines) if body.pipelines is not None else set(who.pipelines or ())
    beyond = sorted(p for p in asked if not who.reaches(p))
    if beyond:
        raise Forbidden(f"token {who.name} does not reach pipeline {beyond[0]!r}")
    settings = get_settings()
    known = set(body.known)
    deadline = time.monotonic() + body.wait_s
    while True:
        changes = gw.changes()
        jobs = await anyio.to_thread.run_sync(claimable_jobs, asked) if asked else []
        left = deadline - time.monotonic()
        if {t.job_id for t in jobs} != known or left <= 0:
            break
        # Woken by NATS's advisories; a look now and then in case the status
        # commit came after the advisory.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changes.wait(), min(left, CLAIM_POLL_S))
    return {
        "jobs": [t.as_dict() for t in jobs],
        "lease_s": settings.gateway_lease_s,
        "max_tasks": settings.gateway_max_tasks,
    }


# -- lease -----------------------------------------------------------------------


class LeaseBody(BaseModel):
    """How many tasks, how long to wait for a first one, and who asks."""

    model_config = ConfigDict(extra="forbid")

    max_tasks: int = Field(default=100, ge=1, le=10_000)
    wait_s: float = Field(default=1.0, ge=0, le=MAX_WAIT_S)
    processor: ProcessorId = "default"


@api(router.post, "/jobs/{job_id}/lease", Scope.PROCESS, 404)
async def lease(job_id: JobId, body: LeaseBody, who: Caller, gw: Gw) -> dict[str, Any]:
    """Lease up to `max_tasks` of the job's tasks: each with its payload (the item's
    JSON text), its delivery count and its lease handle. `active` is false once the
    job no longer serves tasks (finished, canceling, or not started)."""
    terms = await gw.terms(job_id)
    reach(who, terms.pipeline, f"job {job_id}")
    settings = get_settings()
    # A job serves tasks while its consumer exists (started, until teardown).
    answer: dict[str, Any] = {
        "job_id": job_id,
        "active": True,
        "lease_s": gw.lease_s,
        "backpressure": gw.full,
        "tasks": [],
    }
    if gw.full:
        return answer
    n = min(body.max_tasks, settings.gateway_max_tasks)
    # A rate-limited job (its own --rate, or its pipeline's JOBSYS_RATE_LIMITS)
    # is leased no faster than its rate: the tokens come from the same Redis
    # buckets native processors take them from, so both share one rate.
    n, wait_s = await gw.rate_allows(terms, n)
    if n == 0:
        answer["retry_after_s"] = wait_s
        return answer
    leased = await gw.lease(job_id, n, body.wait_s, holder_of(who, body.processor))
    if leased is None:
        answer["active"] = False
        return answer
    answer["tasks"] = [
        {
            "lease": t.handle,
            "task": t.task_no,
            "deliveries": t.deliveries,
            "payload": t.data.decode("utf-8", "replace"),
        }
        for t in leased
    ]
    if leased:
        await signed(job_id, "tasks_leased", who, count=len(leased), processor=body.processor)
    return answer


# -- extend ----------------------------------------------------------------------


class ExtendBody(BaseModel):
    """The handles whose leases live on."""

    model_config = ConfigDict(extra="forbid")

    leases: list[Annotated[str, Field(max_length=MAX_HANDLE_CHARS)]] = Field(max_length=MAX_ITEMS)
    processor: ProcessorId = "default"


@api(router.post, "/leases/extend", Scope.PROCESS)
async def extend(body: ExtendBody, who: Caller, gw: Gw) -> dict[str, Any]:
    """Each lease of the caller restarts (`lease_s` from now); a lease granted before
    the server restarted is adopted. `unknown` counts handles whose lease ended
    (lapsed, reported, handed back) or is another processor's: their tasks may be
    delivered to another processor, but a report still counts if the task is still
    pending. A handle this server did not make is refused."""
    keys = secrets_of()
    handles: list[Handle] = []
    refused = 0
    for text in body.leases:
        try:
            h = read_handle(keys, text)
        except BadHandle:
            refused += 1
            continue
        handles.append(h)
    extended, unknown = gw.extend(handles, holder_of(who, body.processor))
    return {"extended": extended, "unknown": unknown, "refused": refused,
            "lease_s": gw.lease_s}  # fmt: skip


# -- report ----------------------------------------------------------------------


class ReportItem(BaseModel):
    """One task's outcome, named by its lease handle.

    `done` carries `result` (a JSON object); `failed` carries `error` and
    whether it is `transient` (delivered again, until the job's max_deliver)
    or permanent, and may carry the exception's type and traceback. The
    server stores `error` as `Type: error` (`error_type` given) unless
    `verbatim` says it is the stored text already (a jobsys remote processor
    words it as a native processor does: a PermanentError's message has no
    type before it, and its `error_type` is the exception's full class). A
    transient one may carry its pipeline's own retry delay (`retry_delay_s`,
    and `retry_delay_max_s` unless the settings' max applies), waited unless
    the job has its own; `handback` gives a task back unrun (delivered again
    at once, uncharged)."""

    model_config = ConfigDict(extra="forbid")

    lease: str = Field(max_length=MAX_HANDLE_CHARS)
    task: int | None = Field(default=None, ge=0)
    status: Literal["done", "failed", "handback"]
    result: Any = None
    error: str | None = None
    error_type: str | None = Field(default=None, max_length=200)
    traceback: str | None = None
    verbatim: bool = False
    transient: bool = False
    retry_delay_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    retry_delay_max_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class ReportBody(BaseModel):
    """Outcomes of leased tasks of one job (each item is checked on its own)."""

    model_config = ConfigDict(extra="forbid")

    results: list[dict[str, Any]] = Field(max_length=MAX_ITEMS)


def error_text(item: ReportItem) -> str:
    """A failure's error as stored: `Type: message`, as a native processor's, or the
    item's text as is (`verbatim`). The traceback is kept beside it, in the task's
    `error_trace`."""
    message = item.error or "failed"
    if item.verbatim:
        return storable_error(message)
    text = f"{item.error_type}: {message}" if item.error_type else message
    return storable_error(text)


@api(router.post, "/jobs/{job_id}/report", Scope.PROCESS, 404)
async def report(job_id: JobId, body: ReportBody, who: Caller, gw: Gw) -> dict[str, Any]:
    """Count outcomes of the job's leased tasks exactly once (as native results are).
    `accepted` items are queued for recording; `refused` lists the others, each with
    its index and reason; `handed_back` counts tasks given back to NATS."""
    terms = await gw.terms(job_id)
    reach(who, terms.pipeline, f"job {job_id}")
    keys = secrets_of()
    settings = get_settings()
    refused: list[dict[str, Any]] = []
    back: list[Handle] = []
    later: list[tuple[Handle, tuple[float, float] | None]] = []
    accepted = 0
    for i, raw in enumerate(body.results):
        try:
            item = ReportItem.model_validate(raw)
            h = read_handle(keys, item.lease)
            if h.job_id != job_id:
                raise InvalidInput(f"the lease is of job {h.job_id}, not of job {job_id}")
            if item.task is not None and item.task != h.task_no:
                raise InvalidInput(f"the lease is of task {h.task_no}, not of task {item.task}")
            result = _outcome(item, h, terms.max_deliver)
        except (ValidationError, BadHandle, InvalidInput, ValueError) as exc:
            refused.append({"index": i, "error": _one_line(exc)})
            continue
        if isinstance(result, TaskResult):
            gw.record(job_id, h, result)
            accepted += 1
        elif result == "handback":
            back.append(h)
        else:
            later.append((h, pipeline_delay(item)))
    if accepted:
        gw.flush(job_id)
    handed_back = await gw.retry(back, 0.0)
    for h, declared in later:
        handed_back += await gw.retry([h], retry_wait_s(h, terms, declared, settings))
    if refused:
        log.warning("report items refused", extra={"job_id": job_id, "count": len(refused),
                                                  "token": who.fingerprint})  # fmt: skip
    if body.results:
        await signed(job_id, "results_reported", who, accepted=accepted, retried=len(later),
                     handed_back=len(back), refused=len(refused))  # fmt: skip
    return {"accepted": accepted, "retried": len(later), "handed_back": handed_back,
            "refused": refused}  # fmt: skip


def pipeline_delay(item: ReportItem) -> tuple[float, float] | None:
    """The (base, max) retry delay the item says its pipeline declares, or None. The
    server does not import pipelines: the remote processor that ran it says it. Held
    to what a job may ask for (a day), as it comes from the processor's side."""
    if item.retry_delay_s is None:
        return None
    base = min(item.retry_delay_s, MAX_RETRY_DELAY_S)
    cap = item.retry_delay_max_s if item.retry_delay_max_s is not None else float("inf")
    return base, max(min(cap, MAX_RETRY_DELAY_S), base)


def retry_wait_s(
    h: Handle, terms: Terms, declared: tuple[float, float] | None, settings: Settings
) -> float:
    """How long a transient failure waits before its next delivery, as on a native
    processor (jobsys.processor.backoff): the job's --retry-delay, else the
    pipeline's (`declared`), else the settings', after its deliveries so far."""
    own = None
    if terms.retry_delay_s is not None:
        own = (terms.retry_delay_s, terms.retry_delay_max_s or terms.retry_delay_s)
    base, cap = delay_terms(own or declared, settings.retry_delay_s, settings.retry_delay_max_s)
    return retry_delay_s(h.delivered, base, cap)


def _outcome(item: ReportItem, h: Handle, max_deliver: int) -> TaskResult | str:
    """The result to count, or "retry" / "handback" (to NATS)."""
    if item.status == "handback":
        return "handback"
    deliveries = h.delivered
    if item.status == "done":
        return TaskResult(task=h.task_no, status="done", result=item.result, reply=h.reply,
                          deliveries=deliveries)  # fmt: skip
    error = error_text(item)
    if item.transient:
        if deliveries < max_deliver:
            return "retry"
        # The server judges the last delivery, whatever the processor thinks.
        error = storable_error(f"gave up after {deliveries} deliveries: {error}")
    return TaskResult(task=h.task_no, status="failed", error=error, reply=h.reply,
                      deliveries=deliveries, error_type=item.error_type,
                      error_trace=item.traceback)  # fmt: skip


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- announce --------------------------------------------------------------------


class AnnounceBody(BaseModel):
    """A remote processor as it describes itself (the server adds who it is)."""

    model_config = ConfigDict(extra="forbid")

    id: ProcessorId
    host: str = Field(max_length=255)
    pid: int = Field(ge=0)
    version: str = Field(max_length=100)
    started_at: datetime
    state: Literal["running", "stopped"] = "running"
    slots: int = Field(default=0, ge=0, le=100_000)
    pool: str | None = Field(default=None, max_length=20)
    jobs: list[int] = Field(default_factory=list, max_length=10_000)
    pipelines: list[Annotated[str, Field(max_length=500)]] = Field(
        default_factory=list, max_length=1_000
    )
    # Its JOBSYS_PIPELINE_MODULES prefixes (pipelines of those modules it may run).
    modules: list[Annotated[str, Field(max_length=500)]] = Field(
        default_factory=list, max_length=1_000
    )


def shown_pipelines(
    names: list[str], modules: list[str], token_pipelines: Collection[str] | None
) -> list[str]:
    """What a remote processor can serve, as far as its token lets it: its named
    pipelines the token reaches, and the token's pipelines its modules hold."""
    if token_pipelines is None:
        return names
    covered = [
        p for p in token_pipelines
        if any(p.partition(":")[0] == m or p.startswith(f"{m}.") for m in modules)
    ]  # fmt: skip
    return sorted({p for p in names if p in token_pipelines} | set(covered))


@api(router.post, "/announce", Scope.PROCESS)
async def announce_processor(body: AnnounceBody, who: Caller, gw: Gw) -> dict[str, Any]:
    """Record the processor's presence (`jobsys processors` lists it as remote, with
    its token's name, and when it was last seen)."""
    member = Member(
        kind="processor",
        # Keyed by the token's fingerprint: no token can overwrite another's entry.
        id=f"r{who.fingerprint[:8]}-{body.id}",
        host=body.host, pid=body.pid, version=body.version, started_at=body.started_at,
        state=body.state, slots=body.slots, pool=body.pool, jobs=body.jobs,
        pipelines=shown_pipelines(body.pipelines, body.modules, who.pipelines),
        modules=body.modules if who.pipelines is None else [],
        remote=True, token=who.name,
    )  # fmt: skip
    bucket = await open_bucket(gw.js, get_settings(), create=True)
    if bucket is None:
        raise ServiceUnavailable("cannot record presence (the members bucket)")
    await announce(bucket, member)
    return {"id": member.id, "lease_s": gw.lease_s}
