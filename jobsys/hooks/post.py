"""One HTTP attempt of a completion hook: a POST under one total deadline, its answer capped.

httpx's timeouts bound each network operation (the connect, each read, each
write), not a request: a receiver that answers one byte every few seconds
never trips a read timeout, and a sender that reads the whole answer holds
it all in memory. So:

- the whole attempt -- connect, send, the answer's status line and headers --
  runs under one asyncio deadline (JOBSYS_HOOK_TIMEOUT_S) that cancels
  whatever is in flight, however the receiver paces its bytes;
- a 2xx answer's body is never read: the status is the delivery;
- an error answer's body is read, within what is left of the deadline, up
  to ANSWER_CAP bytes (for the excerpt kept in `last_error`), then the
  connection is dropped, however much more the receiver sends. Answers are
  asked for unencoded (`Accept-Encoding: identity`) and read raw, so no
  compressed answer is inflated here.

Each attempt has a fresh event loop and client (hooks are few; a worker's
hook threads share nothing), closed without waiting for a name lookup the
deadline cut short.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx

from jobsys.display import one_line

# Bytes of an error answer read for its excerpt; the rest is never read.
ANSWER_CAP = 4_096
USER_AGENT = "jobsys-hook"


class PostFailed(Exception):
    """The attempt did not get an answer (the message says why, in one line)."""


@dataclass(frozen=True)
class Answer:
    """What the receiver said: its status and, for an error, the start of its body."""

    status: int
    excerpt: bytes = b""

    @property
    def accepted(self) -> bool:
        """A 2xx answer: the hook is delivered."""
        return 200 <= self.status < 300


def post(url: str, payload: dict[str, Any], headers: dict[str, str], deadline_s: float) -> Answer:
    """POST `payload` as JSON to `url`; the answer within `deadline_s` or PostFailed."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_post(url, payload, headers, deadline_s))
    finally:
        # close() does not wait for the resolver thread (a lookup the deadline cut).
        loop.close()


async def _post(
    url: str, payload: dict[str, Any], headers: dict[str, str], deadline_s: float
) -> Answer:
    loop = asyncio.get_running_loop()
    ends = loop.time() + deadline_s
    body = json.dumps(payload).encode()
    sent = {
        **headers,
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
        "User-Agent": USER_AGENT,
    }
    async with httpx.AsyncClient(timeout=deadline_s, follow_redirects=False) as client:
        request = client.build_request("POST", url, content=body, headers=sent)
        try:
            async with asyncio.timeout_at(ends):
                response = await client.send(request, stream=True)
        except TimeoutError:
            raise PostFailed(f"no answer within {deadline_s:g} s") from None
        except httpx.HTTPError as exc:
            raise PostFailed(one_line(f"{type(exc).__name__}: {exc}")) from None
        try:
            if 200 <= response.status_code < 300:
                return Answer(response.status_code)
            return Answer(response.status_code, await _start_of(response, ends))
        finally:
            await response.aclose()


async def _start_of(response: httpx.Response, ends: float) -> bytes:
    """Up to ANSWER_CAP bytes of the answer's body as sent, whatever came by `ends`."""
    data = bytearray()
    try:
        async with asyncio.timeout_at(ends):
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) >= ANSWER_CAP:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass  # what arrived is enough for an excerpt
    return bytes(data[:ANSWER_CAP])
