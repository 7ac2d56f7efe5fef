"""The remote processor's HTTP transport: the task gateway's calls (jobsys.server.work).

One long-lived httpx client per processor, the token as a bearer header,
the server's certificate checked (a CA file for a private one). Each call
returns the answer's JSON, or raises:

- `GatewayRefused` for 401/403: the token is wrong, revoked, expired or may
  not serve this pipeline; retrying cannot help (the processor stops, saying so);
- `GatewayUnavailable` for anything else that is not a success (the server
  down or restarting, a 5xx, a rate limit): the caller tries again later.

The token is never logged; errors quote the server's one-line problem detail.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from jobsys.errors import JobsysError

# Per call: connecting, and the whole answer (a lease waits up to its wait_s).
CONNECT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 60.0


class GatewayRefused(JobsysError):
    """The server refused the token (401) or what it asked for (403)."""


class GatewayUnavailable(JobsysError):
    """The server could not answer now (down, restarting, overloaded)."""


class GatewayGone(JobsysError):
    """The job asked about does not exist (404)."""


class GatewayTooLarge(GatewayUnavailable):
    """The server refused the request's body as too large (413): sent again as it
    is, it would be refused forever."""


class GatewayClient:
    """The gateway's calls, over one connection pool."""

    def __init__(self, url: str, token: str, ca: Path | None = None) -> None:
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca)) if ca is not None else True
        )
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            verify=verify,
        )

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"{path}: {type(exc).__name__}: {exc}") from None
        if answer.is_success:
            data: dict[str, Any] = answer.json()
            return data
        detail = _detail(answer)
        if answer.status_code in (401, 403):
            raise GatewayRefused(f"the server refused {path} ({answer.status_code}): {detail}")
        if answer.status_code == 404:
            raise GatewayGone(detail)
        if answer.status_code == 413:
            raise GatewayTooLarge(f"{path}: {detail}")
        raise GatewayUnavailable(f"{path}: {answer.status_code} {detail}")

    async def claim(
        self, pipelines: list[str] | None, known: list[int], wait_s: float
    ) -> dict[str, Any]:
        """The started jobs of `pipelines` (None: every one the token names), once they
        differ from `known` or after `wait_s`."""
        body = {"pipelines": pipelines, "known": known[:100], "wait_s": wait_s}
        return await self._post("/api/gateway/claim", body)

    async def lease(self, job_id: int, n: int, wait_s: float, processor: str) -> dict[str, Any]:
        """Up to `n` of the job's tasks, waiting up to `wait_s` for a first one."""
        body = {"max_tasks": n, "wait_s": wait_s, "processor": processor}
        return await self._post(f"/api/gateway/jobs/{job_id}/lease", body)

    async def extend(self, handles: list[str], processor: str) -> dict[str, Any]:
        """The leases of `handles` live on."""
        body = {"leases": handles, "processor": processor}
        return await self._post("/api/gateway/leases/extend", body)

    async def report(self, job_id: int, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Outcomes of the job's leased tasks."""
        return await self._post(f"/api/gateway/jobs/{job_id}/report", {"results": items})

    async def announce(self, description: dict[str, Any]) -> dict[str, Any]:
        """This processor's presence."""
        return await self._post("/api/gateway/announce", description)


def _detail(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail).splitlines()[0][:300] if detail else answer.reason_phrase
