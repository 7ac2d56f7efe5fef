"""Declaring a route of the API: its scope, its problems, its OpenAPI entry, in one place.

``@api(router.get, "/jobs", Scope.READ, 404)`` makes a route that only a
token whose scope grants `read` reaches (403 otherwise), and writes that
scope into the OpenAPI document (``x-jobsys-scope``, with the bearer
security requirement) together with the problems it may answer. The tests
read the document to call every route with every scope.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends

from jobsys.server.auth import require
from jobsys.server.problems import openapi_responses
from jobsys.server.tokens import Scope

# The OpenAPI extension naming the scope a route needs ("any": every live token).
SCOPE_KEY = "x-jobsys-scope"
ANY_TOKEN = "any"
# Problems every authenticated route may answer.
COMMON_PROBLEMS = (401, 403, 429, 503)


def api(
    verb: Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]],
    path: str,
    scope: Scope | None,
    *problems: int,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A route decorator (`verb` is e.g. ``router.get``) for a call of `scope`
    (None: any live token) that may also answer `problems`."""
    extra = dict(kwargs.pop("openapi_extra", None) or {})
    extra[SCOPE_KEY] = scope.value if scope is not None else ANY_TOKEN
    extra["security"] = [{"bearer": []}]
    dependencies = [Depends(require(scope))] if scope is not None else []
    return verb(
        path,
        dependencies=dependencies,
        openapi_extra=extra,
        responses=openapi_responses(*COMMON_PROBLEMS, *problems),
        **kwargs,
    )
