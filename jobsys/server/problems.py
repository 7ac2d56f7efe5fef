"""Errors as JSON problem details (RFC 9457), with the CLI's one-line messages.

Every error the server answers with is ``application/problem+json``:
``{"type", "title", "status", "detail", "instance"}``, where `detail` is the
same one line `jobsys` prints for the same failure (without its
``jobsys:`` prefix) and `type` names the kind of problem
(``urn:jobsys:problem:job-not-found``). `PROBLEMS` maps each exception to its
status; `install` puts the handlers on an app; `problem_response` is for
middleware that answers before the app runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import psycopg
import psycopg_pool
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response

from jobsys.display import one_line
from jobsys.errors import (
    InvalidInput,
    JobBusy,
    JobNotFinal,
    JobNotFound,
    JobsysError,
    LedgerPruned,
    ServiceUnavailable,
)
from jobsys.server.limits import RateLimited
from jobsys.server.session import CsrfRefused, wants_page
from jobsys.server.tokens import Forbidden, TokenNotFound, Unauthenticated

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:jobsys:problem:"


class UnsupportedMediaType(JobsysError):
    """A body of a type the route does not take (HTTP 415)."""

    def __init__(self, kind: str, accepted: tuple[str, ...]) -> None:
        super().__init__(f"content-type: {kind or 'none'} is not {' or '.join(accepted)}")


# Each exception jobsys raises, its status and its problem type; the first
# match wins (subclasses before their bases).
PROBLEMS: list[tuple[type[Exception], int, str]] = [
    (Unauthenticated, 401, "unauthenticated"),
    (Forbidden, 403, "forbidden"),
    (CsrfRefused, 403, "csrf"),
    (JobNotFound, 404, "job-not-found"),
    (TokenNotFound, 404, "token-not-found"),
    (JobNotFinal, 409, "job-not-final"),
    (JobBusy, 409, "job-busy"),
    (LedgerPruned, 410, "ledger-pruned"),
    (InvalidInput, 422, "invalid-input"),
    (UnsupportedMediaType, 415, "unsupported-media-type"),
    (RateLimited, 429, "rate-limited"),
    (ServiceUnavailable, 503, "unavailable"),
    (psycopg_pool.PoolTimeout, 503, "unavailable"),
    (psycopg.OperationalError, 503, "unavailable"),
    (redis.exceptions.ConnectionError, 503, "unavailable"),
    # Any other jobsys error is the server's (a setting, a service): its line says which.
    (JobsysError, 500, "server-error"),
]
# What a client is told about a service it cannot see.
_UNAVAILABLE = {
    psycopg_pool.PoolTimeout: "Postgres not reachable from the server",
    psycopg.OperationalError: "Postgres not reachable from the server",
    redis.exceptions.ConnectionError: "Redis not reachable from the server",
}


# Renders a problem as an HTML page: (status, problem type, detail, path, headers).
PageRenderer = Callable[[int, str, str, str | None, Mapping[str, str]], Response]


class Problem(BaseModel):
    """An error (RFC 9457 problem details)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


def problem_body(status: int, kind: str, detail: str, instance: str | None) -> dict[str, Any]:
    """The JSON of a problem."""
    return Problem(
        type=TYPE_PREFIX + kind,
        title=HTTPStatus(status).phrase,
        status=status,
        detail=one_line(detail, limit=1_000),
        instance=instance,
    ).model_dump()


def problem_response(
    status: int,
    kind: str,
    detail: str,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem as a response."""
    return JSONResponse(
        problem_body(status, kind, detail, instance),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def classify(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, problem type, detail) of a known exception; None for a bug."""
    for cls, status, kind in PROBLEMS:
        if isinstance(exc, cls):
            detail = next((t for c, t in _UNAVAILABLE.items() if isinstance(exc, c)), str(exc))
            return status, kind, detail
    return None


def headers_for(exc: BaseException) -> dict[str, str]:
    """The headers a problem of this exception carries."""
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer realm="jobsys"'}
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    return {}


def response_for(exc: BaseException, instance: str | None) -> JSONResponse:
    """The problem response of any exception (a 500 for a bug, which is logged)."""
    known = classify(exc)
    if known is None:
        log.error("request failed", exc_info=exc, extra={"path": instance})
        return problem_response(500, "server-error", "internal error (see the server's log)",
                                instance)  # fmt: skip
    status, kind, detail = known
    if status >= 500:
        log.warning("request failed", extra={"path": instance, "error": one_line(exc)})
    return problem_response(status, kind, detail, instance, headers_for(exc))


def validation_detail(exc: RequestValidationError) -> str:
    """A request's first invalid field as one line: ``limit: Input should be ...``."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
    where = ".".join(loc).replace("_", "-")
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))


def install(app: FastAPI, pages: PageRenderer | None = None) -> None:
    """Answer every error of `app` with a problem (an HTML page rendered by `pages` for
    a browser on a console path)."""

    def page_for(request: Request) -> PageRenderer | None:
        if pages is not None and wants_page(request.headers, request.url.path):
            return pages
        return None

    async def on_error(request: Request, exc: Exception) -> Response:
        render = page_for(request)
        known = classify(exc)
        if render is not None and known is not None:
            return render(*known, request.url.path, headers_for(exc))
        return response_for(exc, request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "too-large" if exc.status_code == 413 else HTTPStatus(exc.status_code).name.lower()
        kind = kind.replace("_", "-")
        render = page_for(request)
        if render is not None:
            return render(exc.status_code, kind, str(exc.detail), request.url.path,
                          Headers(exc.headers or {}))  # fmt: skip
        return problem_response(exc.status_code, kind, str(exc.detail), request.url.path,
                                exc.headers)  # fmt: skip

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        render = page_for(request)
        if render is not None:
            return render(422, "invalid-input", validation_detail(exc), request.url.path, {})
        return problem_response(422, "invalid-input", validation_detail(exc), request.url.path)

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)
    for cls, _, _ in PROBLEMS:
        app.add_exception_handler(cls, on_error)
    app.add_exception_handler(Exception, on_error)


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer these problems (for its OpenAPI entry)."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
