"""Live updates for every open console page from ONE query per refresh.

`Hub` runs inside the server for as long as it serves (started by
`jobsys.server.app.lifespan`): every `refresh_s` seconds, and only while at
least one page is open, it reads the active and just-finished jobs in one
statement (`jobsys.api.overview.live_jobs`) and sends each open page what
changed since it last heard, over server-sent events (``GET /live``). So a
hundred people watching cost the database what one does; with
``jobsys serve --workers N`` each server process refreshes on its own (N
queries per refresh).

A page gets the whole snapshot when it connects, then only the jobs that
changed (and those that left it). Each page sees only jobs of its token's
pipelines. A page that falls behind (its queue full) gets the whole
snapshot again instead of the changes it missed. A stream ends after
STREAM_S and the browser reconnects by itself (EventSource): a revoked
token's page stops receiving within that time, and a server that is
stopping never waits longer than that for its open pages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread

from jobsys.api.overview import JobLine
from jobsys.display import one_line

log = logging.getLogger(__name__)

# Finished jobs stay in the snapshot this long, so a page sees them end.
RECENT_S = 120.0
# A page's stream ends after this long (the browser reconnects at once):
# less than the server's graceful shutdown (jobsys.server.run.GRACEFUL_S).
STREAM_S = 20.0
# What the browser waits before it reconnects (EventSource `retry`), ms.
RECONNECT_MS = 1_000
# A comment line is sent this often when nothing changes (keeps proxies from
# closing an idle stream).
KEEPALIVE_S = 10.0
# Updates a page may be behind before it is sent the whole snapshot instead.
QUEUE_SIZE = 8
# After a failed refresh (Postgres down), wait this long before the next.
ERROR_PAUSE_S = 5.0


def job_state(line: JobLine) -> dict[str, Any]:
    """What a page is told of one job."""
    v = line.view
    eta = line.eta_s
    return {
        "status": v.status,
        "total": v.total,
        "done": v.done,
        "failed": v.failed,
        "lost": v.lost,
        "cancelled": v.cancelled,
        "pending": v.pending,
        "rate": round(line.rate, 3),
        "eta_s": round(eta, 1) if eta is not None else None,
        "blocked": v.blocked,
        **line.extra,
    }


@dataclass(eq=False)
class Subscriber:
    """One open page: the pipelines it may see (None: all) and its queue of messages."""

    pipelines: frozenset[str] | None
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    # The page has not had the whole snapshot yet (or fell behind).
    needs_full: bool = True

    def sees(self, pipeline: str) -> bool:
        """Whether this page may see jobs of `pipeline`."""
        return self.pipelines is None or pipeline in self.pipelines


class Hub:
    """The shared refresh: one query per `refresh_s` while anyone watches, fanned out."""

    def __init__(self, refresh_s: float, read: Callable[[float], list[JobLine]]) -> None:
        self.refresh_s = refresh_s
        self._read = read
        self._subscribers: set[Subscriber] = set()
        # job id -> (pipeline, state) as last read
        self._jobs: dict[int, tuple[str, dict[str, Any]]] = {}
        self._read_at = 0.0
        self._wake = asyncio.Event()
        self.reads = 0  # how many times the snapshot was read (tests, logs)

    @property
    def watching(self) -> int:
        """How many pages are open."""
        return len(self._subscribers)

    def subscribe(self, pipelines: frozenset[str] | None) -> Subscriber:
        """A new page: it gets the whole snapshot at once if a fresh one is at hand,
        else with the next refresh (which comes at once if the hub was idle)."""
        sub = Subscriber(pipelines)
        self._subscribers.add(sub)
        if time.monotonic() - self._read_at <= self.refresh_s:
            self._send(sub, {}, [], full=True)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """A page closed."""
        self._subscribers.discard(sub)

    async def run(self) -> None:
        """Refresh every `refresh_s` while pages are open; idle otherwise."""
        while True:
            if not self._subscribers:
                self._wake.clear()
                await self._wake.wait()
            try:
                lines = await anyio.to_thread.run_sync(self._read, RECENT_S)
            except Exception as exc:
                log.warning("console refresh failed", extra={"error": one_line(exc)})
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            self.reads += 1
            self.publish(lines)
            await asyncio.sleep(self.refresh_s)

    def publish(self, lines: list[JobLine]) -> None:
        """Take a new snapshot and send every page what changed for it."""
        now = {line.view.job_id: (line.view.pipeline, job_state(line)) for line in lines}
        changed = {job_id: entry for job_id, entry in now.items()
                   if self._jobs.get(job_id) != entry}  # fmt: skip
        gone = [(job_id, pipeline) for job_id, (pipeline, _) in self._jobs.items()
                if job_id not in now]  # fmt: skip
        self._jobs = now
        self._read_at = time.monotonic()
        shared: dict[bool, str] = {}  # unfiltered messages, encoded once
        for sub in list(self._subscribers):
            if sub.needs_full:
                self._send(sub, {}, [], full=True)
                continue
            if not changed and not gone:
                continue
            if sub.pipelines is None:
                if False not in shared:
                    shared[False] = self._encode(changed, [j for j, _ in gone], full=False)
                self._put(sub, shared[False])
            else:
                self._send(sub, changed, gone, full=False)

    def _send(
        self,
        sub: Subscriber,
        changed: dict[int, tuple[str, dict[str, Any]]],
        gone: list[tuple[int, str]],
        full: bool,
    ) -> None:
        jobs = self._jobs if full else changed
        visible = {j: e for j, e in jobs.items() if sub.sees(e[0])}
        left = [j for j, pipeline in gone if sub.sees(pipeline)]
        if not full and not visible and not left:
            return
        sub.needs_full = False
        self._put(sub, self._encode(visible, left, full))

    def _put(self, sub: Subscriber, message: str) -> None:
        try:
            sub.queue.put_nowait(message)
        except asyncio.QueueFull:
            # Behind: drop what it has not read and send the whole snapshot next.
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.needs_full = True
            self._send(sub, {}, [], full=True)

    def _encode(
        self, jobs: dict[int, tuple[str, dict[str, Any]]], gone: list[int], full: bool
    ) -> str:
        return json.dumps({
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "full": full,
            "refresh_s": self.refresh_s,
            "jobs": {str(job_id): state for job_id, (_, state) in jobs.items()},
            "gone": gone,
        }, separators=(",", ":"))  # fmt: skip


async def event_stream(hub: Hub, sub: Subscriber) -> AsyncIterator[str]:
    """A page's server-sent events until STREAM_S has passed (or the page closed)."""
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        deadline = time.monotonic() + STREAM_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(sub.queue.get(), timeout=min(left, KEEPALIVE_S))
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"event: jobs\ndata: {message}\n\n"
    finally:
        hub.unsubscribe(sub)
