"""The remote processor (`jobsys process --server URL --token TOKEN`): HTTPS in place of brokers.

It is the native processor's execution -- isolated child processes (or
threads), batch pipelines with their setup, time limits, the retry policy,
fair tickets (jobsys.processor.execute, children, threads, tickets) -- with
the task gateway (jobsys.server.work) as its transport, so the machine it
runs on needs a URL and a `process` token, and no NATS, Redis or Postgres
setting. In place of the native parts:

- feeds: it claims the started jobs of its pipelines (a long poll, answered
  as soon as they change) and leases their tasks (a lease call per job, as
  many as execution wants ahead, times AHEAD_FACTOR);
  a pipeline not allowed here (JOBSYS_PIPELINE_MODULES) is refused, as a
  native processor refuses it;
- keep-alive: every held lease (queued, running, or its outcome not yet
  reported) is extended every lease_s / EXTENDS_PER_LEASE;
- the outbox (`Reports`): outcomes are batched per job and reported; a report
  the server could not take is sent again (backoff up to REPORT_RETRY_MAX_S)
  for as long as the processor lives; while JOBSYS_MAX_HELD_RESULTS outcomes
  wait, nothing more is leased (backpressure);
- announcement: its description is posted every BEAT_S; the server records
  its presence (remote, its token's name) for `jobsys processors`.

A task handed back (the processor stopping) or failed transiently is
reported so, and the server hands it back to NATS. A token refused (401/403)
stops the processor with exit code 1 and one line saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from nats.aio.msg import Msg

from jobsys import jsontext, loops
from jobsys.models import MAX_TYPE_CHARS
from jobsys.nats.admin import share_of
from jobsys.nats.presence import BEAT_S
from jobsys.pipelines.allow import NotAllowed
from jobsys.pipelines.resolve import resolve_spec, servable
from jobsys.processor.calls import Failure
from jobsys.processor.children import ChildSlot
from jobsys.processor.execute import (
    DONE,
    DROPPED,
    HANDBACK,
    Execution,
    JobRun,
    Slot,
    Task,
    retry_decision,
)
from jobsys.processor.gateway_client import (
    GatewayClient,
    GatewayGone,
    GatewayRefused,
    GatewayTooLarge,
    GatewayUnavailable,
)
from jobsys.processor.outbox import ITEM_WIRE_BYTES, failure_size
from jobsys.processor.processor import TICKETS, Pool, ProcessorStats
from jobsys.processor.stopping import StopSwitch
from jobsys.processor.threads import ThreadSlot
from jobsys.processor.tickets import Tickets
from jobsys.settings import Settings, get_settings
from jobsys.storable import storable_error
from jobsys.version import version

log = logging.getLogger(__name__)

# Claims are long polls: the server answers when the started jobs of this
# processor's pipelines change, or after CLAIM_WAIT_S; at most one claim per
# CLAIM_MIN_S; after a failed one, CLAIM_RETRY_S.
CLAIM_WAIT_S = 20.0
CLAIM_MIN_S = 0.2
CLAIM_RETRY_S = 2.0
# A remote processor keeps this many times what a native one would fetched
# ahead (an HTTP round trip per lease costs more than a NATS pull).
AHEAD_FACTOR = 4
# Outcomes per report call, at least (a report is one HTTP call and two
# Postgres statements on the server, whatever its size).
REPORT_BATCH_MIN = 1_000
# A lease call waits this long on the server for a first task.
LEASE_WAIT_S = 1.0
# An empty lease rests the job's feed, doubling up to the second figure.
IDLE_BACKOFF_S = (0.1, 2.0)
# Leases are extended this many times per lease time.
EXTENDS_PER_LEASE = 3
# A report or lease the server could not take is tried again after this,
# doubling up to REPORT_RETRY_MAX_S.
REPORT_RETRY_S = 0.2
REPORT_RETRY_MAX_S = 5.0
# Reports the server refused as too large seal later ones at half their bytes,
# never below this.
MIN_REPORT_BYTES = 1_024
# A task's failure when its outcome alone is over the server's body limit.
TOO_LARGE_ERROR = "outcome too large for the server (over its JOBSYS_SERVE_MAX_BODY_BYTES)"
# How long the last reports may take at shutdown.
FINAL_REPORT_S = 10.0
BACKPRESSURE_POLL_S = 0.05
ROOM_POLL_S = 0.01
# How often the extend loop looks whether a round is due.
EXTEND_TICK_S = 0.2
# One extend names at most this many handles.
EXTEND_CHUNK = 5_000


@dataclass(eq=False)
class Leased:
    """What execution needs of a leased task where a native one has its NATS message:
    the payload, and the lease handle in place of the reply subject."""

    data: bytes
    reply: str


def too_large_failure(item: dict[str, Any]) -> dict[str, Any] | None:
    """What to report instead of an outcome the server refused as too large: its
    task's permanent failure, without result or traceback; None if `item` is that
    already (or a hand-back, which has nothing to cut)."""
    if item.get("status") not in ("done", "failed") or item.get("error") == TOO_LARGE_ERROR:
        return None
    return {"lease": item["lease"], "task": item.get("task"), "status": "failed",
            "transient": False, "verbatim": True, "error": TOO_LARGE_ERROR}  # fmt: skip


@dataclass
class _Batch:
    since: float
    items: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0  # bytes, about (as the outbox counts them)


class Reports:
    """Outcomes waiting to be reported, per job; held until the server took them."""

    def __init__(self, client: GatewayClient, settings: Settings, batch_size: int) -> None:
        self.client = client
        self.settings = settings
        self.batch_size = batch_size
        # Bytes at which a report is sealed: JOBSYS_RESULT_BATCH_BYTES, or half
        # the smallest report of several outcomes the server refused as too
        # large (its body limit is lower), so that later reports fit at once.
        self.max_bytes = settings.result_batch_bytes
        self._open: dict[int, _Batch] = {}
        self._sealed: list[tuple[int, list[dict[str, Any]]]] = []
        self.pending = 0
        self.sent = 0
        self.refused = 0
        self._due = asyncio.Event()
        self._failing = False
        # Handles whose outcome the server took: no longer extended.
        self.done: list[str] = []

    @property
    def full(self) -> bool:
        """Whether feeds must stop leasing (backpressure)."""
        return self.pending >= self.settings.max_held_results

    def add(self, job_id: int, item: dict[str, Any], size: int = 0) -> None:
        """One task's outcome; `size` the length of its result (or error texts) as
        JSON: a report is sent once they come to JOBSYS_RESULT_BATCH_BYTES, so that
        it stays within the server's body limit however big its results."""
        batch = self._open.get(job_id)
        if batch is None:
            batch = self._open[job_id] = _Batch(time.monotonic())
        batch.items.append(item)
        batch.size += size + ITEM_WIRE_BYTES
        self.pending += 1
        if len(batch.items) >= self.batch_size or batch.size >= self.max_bytes:
            self._seal(job_id)

    def flush(self, job_id: int) -> None:
        """Report what is buffered of the job now (nothing more of it is coming soon)."""
        self._seal(job_id)

    def _seal(self, job_id: int) -> None:
        batch = self._open.pop(job_id, None)
        if batch is not None and batch.items:
            self._sealed.append((job_id, batch.items))
            self._due.set()

    async def run(self) -> None:
        """Seal batches on time and report them (a side task)."""
        period = self.settings.result_flush_ms / 1000
        rest = REPORT_RETRY_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), timeout=period / 2)
            self._due.clear()
            now = time.monotonic()
            for job_id, batch in list(self._open.items()):
                if now - batch.since >= period:
                    self._seal(job_id)
            if not await self.send_all():
                await asyncio.sleep(rest)
                rest = min(rest * 2, REPORT_RETRY_MAX_S)
            else:
                rest = REPORT_RETRY_S

    def _shrink(self, job_id: int, items: list[dict[str, Any]], why: str) -> None:
        """The oldest report was too large for the server (its body limit is below
        JOBSYS_RESULT_BATCH_BYTES here, or one result is over it): it goes again in
        halves; one outcome alone too large becomes its task's permanent failure,
        which says why. Sent again whole, it would be refused forever, and every
        report behind it held."""
        if len(items) > 1:
            half = len(items) // 2
            self._sealed[0:1] = [(job_id, items[:half]), (job_id, items[half:])]
            # Measured here, on this rare path: reports sealed before (at the
            # bytes of then) are refused too, and must not shrink it further.
            refused = len(jsontext.dumps({"results": items}))
            seal_at = max(min(self.max_bytes, refused // 2), MIN_REPORT_BYTES)
            (log.warning if seal_at < self.max_bytes else log.info)(
                "a report was too large for the server: sending it in halves",
                extra={"job_id": job_id, "items": len(items), "bytes": refused,
                       "error": why, "seal_at_bytes": seal_at})  # fmt: skip
            self.max_bytes = seal_at
            return
        (item,) = items
        shrunk = too_large_failure(item)
        if shrunk is None:
            # Already as small as an outcome gets: let its lease lapse (the task
            # is delivered again) rather than hold every report behind it.
            log.error("an outcome as small as it gets was too large for the server: "
                      "its lease is left to lapse",
                      extra={"job_id": job_id, "task": item.get("task"), "error": why})  # fmt: skip
            self._sealed.pop(0)
            self.pending -= 1
            self.done.append(item["lease"])  # no longer extended
            return
        log.warning("an outcome alone was too large for the server: its task fails",
                    extra={"job_id": job_id, "task": item.get("task"), "error": why})  # fmt: skip
        self._sealed[0] = (job_id, [shrunk])

    async def send_all(self) -> bool:
        """Report every sealed batch, oldest first; False at the first that failed."""
        while self._sealed:
            job_id, items = self._sealed[0]
            try:
                answer = await self.client.report(job_id, items)
            except GatewayGone:
                answer = {"refused": [], "accepted": 0}  # the job is gone: nothing to count
            except GatewayTooLarge as exc:
                self._shrink(job_id, items, str(exc))
                continue
            except GatewayUnavailable as exc:
                if not self._failing:
                    log.warning("reports cannot be sent; holding them",
                                extra={"job_id": job_id, "error": str(exc)})  # fmt: skip
                self._failing = True
                return False
            if self._failing:
                log.info("reports sent again", extra={"held": self.pending})
                self._failing = False
            self._sealed.pop(0)
            self.pending -= len(items)
            self.sent += 1
            refused = answer.get("refused") or []
            if refused:
                self.refused += len(refused)
                log.warning("the server refused report items",
                            extra={"job_id": job_id, "count": len(refused),
                                   "first": refused[0].get("error")})  # fmt: skip
            self.done.extend(item["lease"] for item in items)
        return True

    async def close(self) -> None:
        """Shutdown: seal everything and try to report it within FINAL_REPORT_S."""
        for job_id in list(self._open):
            self._seal(job_id)
        deadline = time.monotonic() + FINAL_REPORT_S
        while self._sealed and time.monotonic() < deadline:
            if not await self.send_all():
                await asyncio.sleep(REPORT_RETRY_S)


class RemoteProcessor:
    """Leases tasks from `jobsys serve`, runs pipelines, reports outcomes (see the module)."""

    def __init__(
        self,
        server_url: str,
        token: str,
        concurrency: int = 4,
        batch_size: int | None = None,
        pool: Pool = "processes",
        pipelines: list[str] | None = None,
        ca: Path | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.server_url = server_url
        self.client = GatewayClient(server_url, token, ca)
        self.concurrency = concurrency
        self.batch_size = batch_size or self.settings.result_batch_size
        self.pool = pool
        self.pipelines = pipelines
        self.id = uuid.uuid4().hex[:12]
        self.started_at = datetime.now(UTC)
        self.stats = ProcessorStats()
        self.fatal: str | None = None
        self.lease_s = self.settings.ack_wait_s
        self.feeds: dict[int, asyncio.Task[None]] = {}
        self.runs: dict[int, JobRun] = {}
        self.refused: dict[int, str] = {}
        # Lease handle -> job, from lease to the server taking its outcome.
        self.held: dict[str, int] = {}
        self._stop = StopSwitch()
        self._side: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------

    def stop(self) -> None:
        """Ask the processor to stop gracefully (thread-safe)."""
        self._stop.ask()

    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stop.asked()

    async def run(self) -> ProcessorStats:
        """Serve until `stop()` (or SIGTERM/SIGINT when installed by `main`)."""
        self._stop.bind()
        self.reports = Reports(self.client, self.settings, max(self.batch_size, REPORT_BATCH_MIN))
        self.execution = Execution(
            self._settle,
            self.settings.max_result_bytes,
            lambda coro, name: self.spawn(coro, name),
            self._started,
        )
        slot_kind = ChildSlot if self.pool == "processes" else ThreadSlot
        slots: list[Slot] = [slot_kind(self.execution, i) for i in range(self.concurrency)]
        self.execution.slots = slots
        self.tickets = Tickets(max(TICKETS, self.concurrency * 2))
        await asyncio.gather(*(slot.start() for slot in slots))
        self._watch("claims", self._claim_loop())
        self._watch("dispatch", self.execution.dispatch_loop())
        self._watch("time limits", self.execution.watchdog_loop())
        self._watch("reports", self.reports.run())
        self._watch("extends", self._extend_loop())
        self._watch("announce", self._announce_loop())
        log.info("remote processor started",
                 extra={"server": self.server_url, "concurrency": self.concurrency,
                        "pool": self.pool})  # fmt: skip
        await self._stop.wait()
        await self._shutdown()
        return self.stats

    def _watch(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        self._side[name] = task
        task.add_done_callback(lambda t: self._side_ended(name, t))

    def _side_ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._stop.asked() and task.cancelled():
            return
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, GatewayRefused):
            log.error("the server refused this processor; stopping (exit code 1)",
                      extra={"error": str(exc)})  # fmt: skip
            self.fatal = str(exc)
        else:
            log.error("processor side task died; stopping (exit code 1)",
                      extra={"task": name, "error": repr(exc) if exc else "ended"},
                      exc_info=exc)  # fmt: skip
            self.fatal = name
        self.stop()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run a short-lived task; keep a reference; a failure stops the processor."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def ended(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None and not self.stopping():
                self._side_ended(name, t)

        task.add_done_callback(ended)

    async def _shutdown(self) -> None:
        self._stop.ask()
        for feed in self.feeds.values():
            feed.cancel()
        self.execution.drain()
        grace = self.settings.ack_wait_s
        await asyncio.gather(
            *(slot.close(grace) for slot in self.execution.slots), return_exceptions=True
        )
        for name, task in self._side.items():
            if name != "announce":
                task.cancel()
        await asyncio.gather(*self.feeds.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.reports.close()
        announcer = self._side.get("announce")
        if announcer is not None:
            announcer.cancel()
            await asyncio.gather(announcer, return_exceptions=True)
        await asyncio.gather(*self._side.values(), return_exceptions=True)
        self.stats.deaths = self.execution.deaths
        self.stats.splits = self.execution.splits
        self.stats.batches_sent = self.reports.sent
        with contextlib.suppress(Exception):
            await self.client.close()
        log.info("remote processor stopped",
                 extra={**vars(self.stats), "refused_items": self.reports.refused,
                        "fatal": self.fatal})  # fmt: skip

    # -- which jobs to serve ---------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            started = time.monotonic()
            known = sorted(set(self.feeds) | set(self.refused))
            try:
                answer = await self.client.claim(self.pipelines, known, CLAIM_WAIT_S)
            except GatewayUnavailable as exc:
                log.info("claim failed (tried again)", extra={"error": str(exc)})
                await asyncio.sleep(CLAIM_RETRY_S)
                continue
            self.lease_s = float(answer.get("lease_s") or self.lease_s)
            seen = set()
            for job in answer.get("jobs") or []:
                seen.add(job["job_id"])
                self._serve(job)
            for job_id in [j for j in self.feeds if j not in seen]:
                self._drop(job_id, "no longer claimable")
            for job_id in [j for j in self.refused if j not in seen]:
                del self.refused[job_id]
            # At most one claim per CLAIM_MIN_S, however often the jobs change.
            await asyncio.sleep(max(CLAIM_MIN_S - (time.monotonic() - started), 0))

    def _serve(self, job: dict[str, Any]) -> None:
        job_id = int(job["job_id"])
        served = self.runs.get(job_id)
        if served is not None:
            # Every claim answer says each job's share: `jobsys set` is followed
            # here within a claim's wait at most.
            share = share_of(job)
            if share != (served.priority, served.weight):
                self.execution.share(served, *share)
            return
        if job_id in self.feeds or job_id in self.refused or self.stopping():
            return
        pipeline = str(job["pipeline"])
        try:
            spec = resolve_spec(pipeline)
        except Exception as exc:
            # Not allowed here (JOBSYS_PIPELINE_MODULES), or not importable: said
            # once, judged again when the job is claimed anew.
            self.refused[job_id] = pipeline
            why = "not allowed" if isinstance(exc, NotAllowed) else "unavailable"
            log.error(
                f"pipeline {why} on this processor: job not served",
                extra={"job_id": job_id, "pipeline": pipeline, "error": str(exc)},
            )
            return
        run = JobRun(
            job_id=job_id,
            pipeline=pipeline,
            spec=spec,
            timeout_s=float(job.get("task_timeout_s") or self.settings.task_timeout_s),
            max_deliver=int(job.get("max_deliver") or self.settings.max_deliver),
        )
        self.execution.share(run, *share_of(job))
        if spec.batch_size:
            self.tickets.grow(2 * spec.batch_size)
        self.runs[job_id] = run
        task = asyncio.create_task(self._feed(run), name=f"feed {job_id}")
        self.feeds[job_id] = task
        task.add_done_callback(lambda t: self._feed_ended(job_id, t))
        log.info("serving job", extra={"job_id": job_id, "pipeline": pipeline})

    def _drop(self, job_id: int, why: str) -> None:
        task = self.feeds.pop(job_id, None)
        run = self.runs.pop(job_id, None)
        if run is not None:
            run.active = False
        if task is not None:
            task.cancel()
        self.execution.forget(job_id)
        log.info("stopped serving job", extra={"job_id": job_id, "reason": why})

    def _feed_ended(self, job_id: int, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stopping():
            return
        exc = task.exception()
        if isinstance(exc, GatewayRefused):
            self._side_ended(f"feed {job_id}", task)
            return
        if exc is not None:
            log.error("feed died; serving its job again at the next claim",
                      extra={"job_id": job_id, "error": repr(exc)}, exc_info=exc)  # fmt: skip
        if self.runs.get(job_id) is not None:
            self._drop(job_id, "feed ended")

    async def _feed(self, run: JobRun) -> None:
        rest = IDLE_BACKOFF_S[0]
        while run.active and not self.stopping():
            if self.reports.full:
                await asyncio.sleep(BACKPRESSURE_POLL_S)
                continue
            ahead = self.execution.ahead(run) * AHEAD_FACTOR
            # The next lease goes out when half of what is leased ahead started.
            while self.execution.queued(run.job_id) * 2 >= ahead and run.active:
                await asyncio.sleep(ROOM_POLL_S)
            if not run.active:
                return
            want = max(1, ahead - self.execution.queued(run.job_id))
            n = await self.tickets.take(want, run.priority)
            try:
                answer = await self.client.lease(run.job_id, n, LEASE_WAIT_S, self.id)
            except (GatewayUnavailable, GatewayGone) as exc:
                self.tickets.give(n)
                if isinstance(exc, GatewayGone):
                    self._drop(run.job_id, "job gone")
                    return
                log.info("lease failed", extra={"job_id": run.job_id, "error": str(exc)})
                await asyncio.sleep(rest)
                rest = min(rest * 2, IDLE_BACKOFF_S[1])
                continue
            except BaseException:
                self.tickets.give(n)
                raise
            tasks = answer.get("tasks") or []
            self.tickets.give(n - len(tasks))
            for t in tasks:
                handle = str(t["lease"])
                self.held[handle] = run.job_id
                leased = Leased(str(t["payload"]).encode("utf-8"), handle)
                # Slots read only `.data` (and settling `.reply`) of a task's message.
                task = Task(run=run, task_no=int(t["task"]), msg=cast(Msg, leased),
                            deliveries=max(int(t.get("deliveries") or 1), 1))  # fmt: skip
                if run.active:
                    self.execution.submit_one(task)
                else:
                    self._settle(task, DROPPED, None)
            if not answer.get("active", True):
                self._drop(run.job_id, "job no longer started")
                return
            if tasks:
                rest = IDLE_BACKOFF_S[0]
            elif answer.get("backpressure"):
                # The server holds too many unrecorded results: soon, not idle.
                await asyncio.sleep(BACKPRESSURE_POLL_S)
            elif answer.get("retry_after_s") is not None:
                # The job's rate limit: ask again when a token could be there.
                await asyncio.sleep(min(float(answer["retry_after_s"]), IDLE_BACKOFF_S[1]))
            else:
                await asyncio.sleep(rest)
                rest = min(rest * 2, IDLE_BACKOFF_S[1])

    # -- outcomes ----------------------------------------------------------------

    def _started(self, task: Task, deadline: float) -> None:
        task.started = time.monotonic()

    def _settle(self, task: Task, kind: str, value: Any, size: int = 0) -> None:
        """A task's outcome here: reported to the server (or forgotten if dropped)."""
        self._outcome(task, kind, value, size)
        job_id = task.run.job_id
        if not self.execution.queued(job_id) and not any(
            s.call is not None
            and s.call.run.job_id == job_id
            and len(s.call.answered) < len(s.call.tasks)
            for s in self.execution.slots
        ):
            # The job's last task here: no reason to wait for the flush timer.
            self.reports.flush(job_id)

    def _outcome(self, task: Task, kind: str, value: Any, size: int) -> None:
        self.tickets.give(1)
        handle = task.msg.reply
        job_id = task.run.job_id
        if kind == DROPPED:
            self.stats.skipped += 1
            self.held.pop(handle, None)
            return
        if kind == HANDBACK:
            self.stats.skipped += 1
            self.reports.add(job_id, {"lease": handle, "status": "handback"})
            return
        self.stats.ran += 1
        if kind == DONE:
            self.stats.ok += 1
            self.reports.add(job_id, {"lease": handle, "task": task.task_no, "status": "done",
                                      "result": value}, size)  # fmt: skip
            return
        decision, reason = retry_decision(task, kind, value)
        transient = decision == "retry"
        if transient:
            self.stats.retried += 1
        else:
            self.stats.failed += 1
        # Stored as a native processor stores it (processor.result_item): the
        # reason text as is (`verbatim`: "Type: message", a PermanentError's
        # message alone, "gave up after N deliveries: ..."), and the exception's
        # class and traceback when an exception made it (a Failure).
        failure = reason if isinstance(reason, Failure) else None
        error_type = failure.error_type if failure is not None else None
        item = {"lease": handle, "task": task.task_no, "status": "failed",
                "transient": transient, "error": storable_error(str(reason)), "verbatim": True,
                "error_type": error_type[:MAX_TYPE_CHARS] if error_type else None,
                "traceback": failure.trace if failure is not None else None}  # fmt: skip
        declared = task.run.spec.retry_delay
        if transient and declared is not None:
            # The pipeline's own delay: the server waits it unless the job has its own.
            base, cap = declared
            item["retry_delay_s"] = base
            item["retry_delay_max_s"] = cap if math.isfinite(cap) else None
        self.reports.add(job_id, item, failure_size(item))

    # -- keep-alive and presence ---------------------------------------------------

    async def _extend_loop(self) -> None:
        # Timed from the last round, re-read every tick: the lease time is a guess
        # (ack_wait) until the server's first answer, which may be far shorter.
        last = time.monotonic()
        while True:
            await asyncio.sleep(EXTEND_TICK_S)
            if time.monotonic() - last < max(self.lease_s / EXTENDS_PER_LEASE, EXTEND_TICK_S):
                continue
            last = time.monotonic()
            for handle in self.reports.done:
                self.held.pop(handle, None)
            self.reports.done.clear()
            handles = list(self.held)
            for i in range(0, len(handles), EXTEND_CHUNK):
                try:
                    await self.client.extend(handles[i : i + EXTEND_CHUNK], self.id)
                except GatewayUnavailable as exc:
                    log.info("extend failed (tried again)", extra={"error": str(exc)})
                    break

    def describe(self, state: str = "running") -> dict[str, Any]:
        """This processor as it announces itself."""
        pipelines, modules = servable()
        return {
            "id": self.id,
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "version": version(),
            "started_at": self.started_at.isoformat(),
            "state": state,
            "slots": self.concurrency,
            "pool": self.pool,
            "jobs": sorted(self.feeds) if state == "running" else [],
            "pipelines": self.pipelines if self.pipelines is not None else pipelines,
            "modules": [] if self.pipelines is not None else modules,
        }

    async def _announce_loop(self) -> None:
        try:
            while True:
                try:
                    await self.client.announce(self.describe())
                except GatewayUnavailable as exc:
                    log.debug("announce failed (tried again)", extra={"error": str(exc)})
                await asyncio.sleep(BEAT_S)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.announce(self.describe("stopped")), 2.0)
            raise


def main(
    server_url: str,
    token: str,
    concurrency: int = 4,
    batch_size: int | None = None,
    pool: Pool = "processes",
    pipelines: list[str] | None = None,
    ca: Path | None = None,
) -> ProcessorStats:
    """Run a remote processor until SIGTERM or SIGINT; exit 1 if it had to stop."""
    processor = RemoteProcessor(server_url, token, concurrency, batch_size, pool, pipelines, ca)

    async def serve() -> ProcessorStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, processor.stop)
        return await processor.run()

    stats = loops.run(serve())
    if processor.fatal is not None:
        raise SystemExit(1)
    return stats
