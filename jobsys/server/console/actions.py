"""What a person does in the console: sign in and out, cancel a job, retry its failed
and lost tasks as a child job, submit a job from an items file.

Every change is a POST behind a confirmation page (or the submit form), needs
a token whose scope grants `submit` and reaches the job's pipeline (403
otherwise, the same `require`/`reach` as the API), and, made with the
sign-in cookie, the sign-in's CSRF token (checked by
`jobsys.server.auth.Authenticate` before any route runs). Each is signed in
the job's events with the token's fingerprint, as over the API.

The items file of a submit is sent by the page's script as the request body
(NDJSON, the options in the query, the CSRF token in a header) and streamed
into the job's ledger as an API upload is (`jobsys.server.upload`): the
upload limit applies, and nothing is held whole.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from functools import partial
from typing import Annotated
from urllib.parse import parse_qsl

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from jobsys.api.cancel import cancel
from jobsys.api.retry import RETRYABLE, retry
from jobsys.api.submit import submit
from jobsys.errors import InvalidInput
from jobsys.server import session
from jobsys.server.auth import caller, reach, require
from jobsys.server.console.pages import job_line
from jobsys.server.console.render import page
from jobsys.server.jobs import options_from
from jobsys.server.limits import UPLOAD_TYPES, Limiter
from jobsys.server.problems import UnsupportedMediaType
from jobsys.server.tokens import Principal, Scope, Unauthenticated, authenticate
from jobsys.server.upload import items_from_stream

router = APIRouter(include_in_schema=False)
changes = APIRouter(include_in_schema=False, dependencies=[Depends(require(Scope.SUBMIT))])

Caller = Annotated[Principal, Depends(caller)]
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]
# Where a person lands after signing in when the sign-in page was not sent from another page.
HOME = "/jobs"


def local_path(target: str | None) -> str:
    """`target` if it is a path of this server, else HOME (never a redirect elsewhere)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return HOME
    return target


def secure_cookie(request: Request) -> bool:
    """Cookies are Secure unless the server is reached over plain HTTP on this machine
    (a browser sends no Secure cookie over plain HTTP to another host)."""
    if request.url.scheme == "https":
        return True
    host = request.url.hostname or ""
    try:
        return not (host == "localhost" or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return True


async def form_pairs(request: Request) -> list[tuple[str, str]]:
    """The fields of a URL-encoded form, in order (a field may repeat)."""
    body = await session.read_small_body(request.receive)
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


# ---------------------------------------------------------------- signing in


def signin_page(
    request: Request, target: str, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    """The sign-in form, with a fresh double-submit value in its cookie and its form."""
    nonce = session.new_signin_nonce()
    response = page(request, "signin.html", status_code=status_code, nonce=nonce,
                    next=target, error=error)  # fmt: skip
    response.set_cookie(session.SIGNIN_COOKIE, nonce, max_age=session.SIGNIN_FORM_S,
                        path="/signin", httponly=True, samesite="strict",
                        secure=secure_cookie(request))  # fmt: skip
    return response


@router.get("/signin", response_class=HTMLResponse)
def signin_form(
    request: Request, next: Annotated[str | None, Query(max_length=2_000)] = None
) -> HTMLResponse:
    """Sign in with an API token (`jobsys token create`)."""
    return signin_page(request, local_path(next))


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request) -> Response:
    """Check the token; keep it in the sign-in cookie; go where the person was going.

    The sign-in page's double-submit value must come back (no other site can
    sign a browser in with a token of its choosing), and failed sign-ins
    count against the address as failed API logins do (429 past the limit).
    """
    limiter: Limiter = request.app.state.limiter
    client = request.client.host if request.client else "unknown"
    limiter.check_failures(client)
    fields = dict(await form_pairs(request))
    target = local_path(fields.get("next"))
    nonce = session.cookie_value(request.headers, session.SIGNIN_COOKIE)
    if session.cross_site(request.headers) or not session.same_value(nonce, fields.get("nonce")):
        return signin_page(request, target, "The sign-in form expired: sign in again.", 403)
    token = fields.get("token", "").strip()
    try:
        who = await anyio.to_thread.run_sync(authenticate, token)
    except Unauthenticated:
        limiter.failed(client)
        return signin_page(request, target, "That token is not a live jobsys token.", 401)
    if not who.grants(Scope.READ):
        return signin_page(request, target,
                           f"A {who.scope} token cannot use the console: sign in with a read, "
                           "submit or admin token.", 403)  # fmt: skip
    max_age = session.SESSION_S
    if who.expires_at is not None:
        max_age = min(max_age, int((who.expires_at - datetime.now(UTC)).total_seconds()))
    response = RedirectResponse(target, status_code=303)
    secure = secure_cookie(request)
    response.set_cookie(session.session_cookie(secure), token, max_age=max(max_age, 1), path="/",
                        httponly=True, samesite="strict", secure=secure)  # fmt: skip
    response.delete_cookie(session.SIGNIN_COOKIE, path="/signin")
    return response


@router.post("/signout", dependencies=[Depends(require(Scope.READ))])
def signout() -> RedirectResponse:
    """Forget the sign-in (the token itself stays live: revoke it with `jobsys token
    revoke`)."""
    response = RedirectResponse("/signin", status_code=303)
    for name in (session.SECURE_COOKIE, session.COOKIE):
        response.delete_cookie(name, path="/", secure=name == session.SECURE_COOKIE)
    return response


# ---------------------------------------------------------------- changes


@changes.get("/jobs/{job_id}/cancel", response_class=HTMLResponse)
def cancel_confirm(request: Request, who: Caller, job_id: JobId) -> HTMLResponse:
    """Asks before cancelling."""
    line = job_line(who, job_id)
    return page(request, "cancel.html", line=line, job=line.view, live=False)


@changes.post("/jobs/{job_id}/cancel")
def cancel_job(who: Caller, job_id: JobId) -> RedirectResponse:
    """Cancel the job (`jobsys cancel`), then show it."""
    job_line(who, job_id)
    cancel(job_id, by=who.actor)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@changes.get("/jobs/{job_id}/retry", response_class=HTMLResponse)
def retry_confirm(request: Request, who: Caller, job_id: JobId) -> HTMLResponse:
    """Asks which tasks to retry before making the child job."""
    line = job_line(who, job_id)
    return page(request, "retry.html", line=line, job=line.view, statuses=RETRYABLE,
                live=False)  # fmt: skip


@changes.post("/jobs/{job_id}/retry")
async def retry_job(request: Request, who: Caller, job_id: JobId) -> RedirectResponse:
    """Re-run the job's failed and lost (or chosen) tasks as a child job (`jobsys
    retry`), and land on the child."""
    pairs = await form_pairs(request)
    statuses = [value for name, value in pairs if name == "status"]
    error_like = next((value for name, value in pairs if name == "error_like"), "").strip()
    await anyio.to_thread.run_sync(job_line, who, job_id)
    if not statuses:
        raise InvalidInput("status: choose at least one of " + ", ".join(RETRYABLE))
    run = partial(retry, job_id, tuple(statuses), error_like or None, by=who.actor)
    made = await anyio.to_thread.run_sync(run)
    return RedirectResponse(f"/jobs/{made.job.job_id}", status_code=303)


@changes.get("/submit", response_class=HTMLResponse)
def submit_form(request: Request, who: Caller) -> HTMLResponse:
    """Submit a job from an items file (JSON Lines, one object per task)."""
    pipelines = sorted(who.pipelines) if who.pipelines is not None else []
    return page(request, "submit.html", pipelines=pipelines, live=False)


@changes.post("/submit")
async def submit_upload(
    request: Request,
    who: Caller,
    pipeline: Annotated[str, Query(min_length=1, max_length=500)],
    name: Annotated[str | None, Query(max_length=10_000)] = None,
    failure_threshold: float | None = None,
    max_deliver: int | None = None,
    task_timeout_s: float | None = None,
    max_in_flight: int | None = None,
) -> JSONResponse:
    """The submit form's upload: items as NDJSON in the body, options in the query;
    answers the new job's id and page (201)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        raise UnsupportedMediaType(kind, ("application/x-ndjson",))
    given = {
        "pipeline": pipeline, "name": name, "failure_threshold": failure_threshold,
        "max_deliver": max_deliver, "task_timeout_s": task_timeout_s,
        "max_in_flight": max_in_flight,
    }  # fmt: skip
    options = options_from({k: v for k, v in given.items() if v is not None})
    reach(who, options.pipeline, f"pipeline {options.pipeline!r}")
    items = items_from_stream(request.stream().__aiter__())
    run = partial(submit, options.pipeline, items, by=who.actor,
                  **options.model_dump(exclude={"pipeline"}))  # fmt: skip
    job = await anyio.to_thread.run_sync(run)
    return JSONResponse({"job_id": job.id, "url": f"/jobs/{job.id}"}, status_code=201,
                        headers={"Location": f"/jobs/{job.id}"})  # fmt: skip
