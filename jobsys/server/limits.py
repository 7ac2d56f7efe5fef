"""What one client may cost the server: requests per token, failed logins per
address, bytes per request body.

Rates are counted by the `limits` library (a moving window in this
process's memory: with ``jobsys serve --workers N`` each worker process
counts on its own, so a token may make up to N times the rate). Body sizes
are counted as the body arrives, whatever the client announced, so a
chunked upload cannot slip past a Content-Length check.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobsys.errors import JobsysError
from jobsys.settings import Settings

# Bodies of these types are item uploads (`POST /api/jobs`, streamed into the
# job's ledger) and get the upload limit; every other body the body limit.
UPLOAD_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/ndjson"})


class RateLimited(JobsysError):
    """Too many requests (HTTP 429); `retry_after` is how many seconds to wait."""

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"{what}: try again in {retry_after} s")
        self.retry_after = retry_after


class BodyTooLarge(HTTPException):
    """A request body over its limit (HTTP 413).

    An HTTPException so that whatever reads the body (FastAPI's own parsing
    included) lets it through as it is, instead of calling it a parse error.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit:,}-byte limit")
        self.limit = limit


class Limiter:
    """The request rates of one server process."""

    def __init__(self, settings: Settings) -> None:
        self.per_token: RateLimitItem = parse(settings.serve_rate_limit)
        self.failures: RateLimitItem = parse(settings.serve_auth_failures)
        self._window = MovingWindowRateLimiter(MemoryStorage())

    def _retry_after(self, item: RateLimitItem, key: str) -> int:
        reset = self._window.get_window_stats(item, key).reset_time
        return max(1, math.ceil(reset - time.time()))

    def token_request(self, fingerprint: str) -> None:
        """Count a request of this token; raises RateLimited past the rate."""
        if not self._window.hit(self.per_token, "token", fingerprint):
            raise RateLimited(
                f"token {fingerprint} is over {self.per_token}",
                self._retry_after(self.per_token, "token"),
            )

    def check_failures(self, client: str) -> None:
        """Raise RateLimited if `client` failed to log in too often of late."""
        if not self._window.test(self.failures, "failed", client):
            raise RateLimited(
                f"too many failed logins from {client}",
                self._retry_after(self.failures, "failed"),
            )

    def failed(self, client: str) -> None:
        """Count a failed login from `client`."""
        self._window.hit(self.failures, "failed", client)


class BodyLimit:
    """ASGI middleware: 413 for a body over its limit, announced or as it arrives."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    def limit_for(self, headers: Headers) -> int:
        """The limit of a request with these headers."""
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        return self.max_upload if kind in UPLOAD_TYPES else self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(headers)
        announced = headers.get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            # Refused before a byte of it is read; the problem response comes
            # from the app's handlers, by way of the endpoint's first read.
            async def refuse() -> Message:
                raise BodyTooLarge(limit)

            await self.app(scope, refuse, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)
