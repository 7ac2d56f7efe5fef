"""The processor (`jobsys process`): NATS tasks in, Dramatiq result batches out.

It composes six parts, one file each:

- feeds (jobsys.processor.feeds): which job streams to serve, fetching;
- tickets (jobsys.processor.tickets): fair sharing of fetches among jobs;
- execution (jobsys.processor.execute, with children / threads): running
  pipelines in isolated child processes (default) or threads, and what a
  failure, a crash or a time limit costs;
- the outbox (jobsys.processor.outbox): result batches held until recorded;
- keep-alive (jobsys.processor.keepalive): every message held stays in
  progress in NATS;
- its announcement (jobsys.processor.announce): who it is, what it serves
  and refuses, for `jobsys processors` and `jobsys status`.

Its side tasks (stream listing, dispatch, time-limit watchdog, outbox,
keep-alive ticker, announcement) are watched: one that dies stops the processor with a
non-zero exit (the Procfile runner restarts it), after logging why. A feed
that dies is logged and served again. Every task created is referenced.

SIGTERM/SIGINT: stop fetching, hand back (nak) the tasks not started, let
running calls finish (up to ack_wait), send the results, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobsys import loops
from jobsys.models import TaskResult
from jobsys.nats.connect import connect, jetstream
from jobsys.nats.subjects import again_subject, job_notices, serial_of_again
from jobsys.processor.announce import Announcer
from jobsys.processor.backoff import delay_terms, retry_delay_s
from jobsys.processor.calls import Failure
from jobsys.processor.children import ChildSlot
from jobsys.processor.execute import (
    DONE,
    DROPPED,
    HANDBACK,
    TIMED_OUT,
    Execution,
    Slot,
    Task,
    retry_decision,
)
from jobsys.processor.feeds import Feeds
from jobsys.processor.keepalive import NO_DEADLINE, KeepAlive
from jobsys.processor.outbox import Item, Outbox, failure_size, wire_item
from jobsys.processor.rates import Rates
from jobsys.processor.retries import RetryNotes
from jobsys.processor.stopping import StopSwitch
from jobsys.processor.tally import Tally
from jobsys.processor.threads import ThreadSlot
from jobsys.processor.tickets import Tickets
from jobsys.settings import Settings, get_settings
from jobsys.storable import storable_error

log = logging.getLogger(__name__)


Pool = Literal["processes", "threads"]
# Tasks one processor holds fetched and not yet run, across its jobs.
TICKETS = 1_000
# The metrics' outcome label of a task that did not succeed, by what is done with it.
OUTCOME_OF = {"fail": "failed", "retry": "retry"}


@dataclass
class ProcessorStats:
    """Counters a processor keeps about itself (logged at exit, read by tests/bench)."""

    ran: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    deaths: int = 0
    splits: int = 0
    batches_sent: int = 0
    batches_confirmed: int = 0
    batches_resent: int = 0
    backpressure_waits: int = 0


def result_item(task: Task, kind: str, value: Any) -> Item:
    """A task's final outcome (DONE with its result, or a failure with its reason) as
    it goes on the wire: what `wire_item` makes of the `TaskResult`.

    A done task's item is built here without the model: every field was checked
    where it came in (task number, reply and delivery count when the message
    was fetched, jobsys.processor.feeds; the result in the slot that made it,
    a JSON object, jobsys.processor.calls), and the worker validates the item
    again. A failure (rare) goes through the model, which makes its texts
    storable."""
    if kind == DONE and type(value) is dict:
        return {
            "task": task.task_no,
            "status": "done",
            "result": value,
            "reply": task.msg.reply,
            "deliveries": task.deliveries,
        }
    if kind == DONE:
        return wire_item(
            TaskResult(
                task=task.task_no,
                status="done",
                result=value,
                reply=task.msg.reply,
                deliveries=task.deliveries,
            )
        )
    failure = value if isinstance(value, Failure) else None
    return wire_item(
        TaskResult(
            task=task.task_no,
            status="failed",
            error=storable_error(value),
            error_type=failure.error_type if failure else None,
            error_trace=failure.trace if failure else None,
            reply=task.msg.reply,
            deliveries=task.deliveries,
        )
    )


class Processor:
    """Pulls task messages of all started jobs, runs pipelines, sends result batches."""

    def __init__(
        self,
        concurrency: int = 4,
        batch_size: int | None = None,
        settings: Settings | None = None,
        pool: Pool = "processes",
    ) -> None:
        self.settings = settings or get_settings()
        self.concurrency = concurrency
        self.batch_size = batch_size or self.settings.result_batch_size
        self.pool = pool
        self.stats = ProcessorStats()
        # Per-task metrics, published per result batch (jobsys.processor.tally).
        self.tally = Tally()
        # Set when a side task died: the processor stops and exits non-zero.
        self.fatal: str | None = None
        self._stop = StopSwitch()
        self._side: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._nc: NATS | None = None

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
        nc = self._nc = await connect(
            self.settings.nats_url, name="jobsys-processor", reconnected=self._reconnected
        )
        js = jetstream(nc, self.settings)
        self.keepalive = KeepAlive(nc)
        self.retry_notes = RetryNotes()
        notify_prefix = nc.new_inbox()
        self.outbox = Outbox(
            self.settings,
            self.keepalive,
            self.batch_size,
            lambda s: f"{notify_prefix}.{s}",
            on_seal=lambda job_id: self.tally.flush(),
        )
        self.execution = Execution(
            self._settle,
            self.settings.max_result_bytes,
            lambda coro, name: self.spawn(coro, name, fatal=True),
            self._started,
        )
        self.execution.rates = self.rates = Rates(
            self.settings, self.execution.queued, self.execution.wake, self.spawn
        )
        slot_kind = ChildSlot if self.pool == "processes" else ThreadSlot
        slots: list[Slot] = [slot_kind(self.execution, i) for i in range(self.concurrency)]
        self.execution.slots = slots
        self.tickets = Tickets(max(TICKETS, self.concurrency * 2))
        self.feeds = Feeds(
            self.settings,
            nc,
            js,
            self.execution,
            self.tickets,
            self.keepalive,
            self.outbox,
            self.stopping,
            self.spawn,
        )
        await asyncio.gather(*(slot.start() for slot in slots))
        # Said once a job's stream and consumer are made: a new job is served
        # from then on (and only this namespace's are heard of).
        await nc.subscribe(job_notices(self.settings.namespace), cb=self.feeds.on_notice)
        await nc.subscribe(f"{notify_prefix}.*", cb=self._on_confirm)
        await nc.subscribe(again_subject(f"{notify_prefix}.*"), cb=self._on_again)
        self._watch("stream listing", self.feeds.listing_loop())
        self._watch("dispatch", self.execution.dispatch_loop())
        self._watch("time limits", self.execution.watchdog_loop())
        self._watch("outbox", self.outbox.run())
        self._watch("keep-alive", self.keepalive.run())
        self._watch("announce", self._announcer(js).run())
        self._watch("retry notes", self.retry_notes.run())
        log.info(
            "processor started",
            extra={
                "concurrency": self.concurrency,
                "pool": self.pool,
                "batch_size": self.batch_size,
            },
        )
        await self._stop.wait()
        await self._shutdown()
        return self.stats

    def _announcer(self, js: JetStreamContext) -> Announcer:
        """Who this processor is and what it serves or refuses (jobsys.processor.announce)."""
        feeds = self.feeds
        return Announcer(
            self.settings,
            js,
            self.concurrency,
            self.pool,
            served=lambda: list(feeds.feeds),
            refused=lambda: {**feeds.unavailable, **feeds.refused},
        )

    def _watch(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        self._side[name] = task
        task.add_done_callback(lambda t: self._side_ended(name, t))

    def _side_ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._stop.asked() and task.cancelled():
            return
        exc = None if task.cancelled() else task.exception()
        log.error(
            "processor side task died; stopping (exit code 1)",
            extra={"task": name, "error": repr(exc) if exc else "ended"},
            exc_info=exc,
        )
        self.fatal = name
        self.stop()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, fatal: bool = False) -> None:
        """Run a short-lived task; keep a reference; log its failure (stop if `fatal`)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._spawned_ended(name, t, fatal))

    def _spawned_ended(self, name: str, task: asyncio.Task[Any], fatal: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if fatal and not self._stop.asked():
            self._side_ended(name, task)
        else:
            log.warning("processor task failed", extra={"task": name, "error": repr(exc)})

    async def _shutdown(self) -> None:
        self._stop.ask()
        self.feeds.stop_all()
        # Tasks not started go back to NATS now; running calls finish.
        self.execution.drain()
        grace = self.settings.ack_wait_s
        await asyncio.gather(
            *(slot.close(grace) for slot in self.execution.slots), return_exceptions=True
        )
        for task in self._side.values():
            task.cancel()
        await asyncio.gather(*self._side.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.outbox.close()
        self.tally.flush()
        with contextlib.suppress(Exception):
            await self.rates.close()
        with contextlib.suppress(Exception):
            await self.retry_notes.flush()
        self.retry_notes.close()
        self.stats.deaths = self.execution.deaths
        self.stats.splits = self.execution.splits
        ob = self.outbox.stats
        self.stats.batches_sent = ob.batches_sent
        self.stats.batches_confirmed = ob.batches_confirmed
        self.stats.batches_resent = ob.batches_resent
        self.stats.backpressure_waits = self.feeds.backpressure_waits
        assert self._nc is not None
        # flush + close, not drain: drain waits up to 30 s on subscriptions
        # we no longer care about; the naks above must reach the server.
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=5)
        with contextlib.suppress(Exception):
            await self._nc.close()
        log.info("processor stopped", extra={**vars(self.stats), "fatal": self.fatal})

    # -- outcomes ------------------------------------------------------------

    def _started(self, task: Task, deadline: float) -> None:
        # Past its time limit a task is no longer kept alive (backstop for a
        # slot that cannot be stopped).
        task.started = time.monotonic()
        self.keepalive.until(task.msg.reply, deadline)

    def _reconnected(self) -> None:
        # The server forgot the pull requests waiting on it (the empty feeds'
        # long probes): they are sent again now, not when they would expire.
        feeds = getattr(self, "feeds", None)
        if feeds is not None:
            feeds.wake_probes()

    def _settle(self, task: Task, kind: str, value: Any, size: int = 0) -> None:
        """A task's outcome here: a result to record, a retry, or nothing ran. `size`:
        a DONE result's length as JSON (result batches are sealed by bytes too)."""
        self.tickets.give(1)
        last = self.feeds.settled(task.run.job_id)
        reply = task.msg.reply
        if kind == DROPPED:
            self.stats.skipped += 1
            self.keepalive.release(reply)
            return
        if kind == HANDBACK:
            self.stats.skipped += 1
            self.keepalive.release(reply)
            self.spawn(task.msg.nak(), "hand a task back")
            return
        self.stats.ran += 1
        pipeline = task.run.pipeline
        if task.started:
            self.tally.took(pipeline, time.monotonic() - task.started)
        if kind != DONE:
            decision, value = retry_decision(task, kind, value)
            outcome = "timeout" if TIMED_OUT in str(value) else OUTCOME_OF[decision]
            self.tally.ran(pipeline, outcome)
            if decision == "retry":
                # No batch to wait for: its metrics are published now.
                self.tally.flush()
                self.stats.retried += 1
                self.keepalive.release(reply)
                delay = self.retry_delay(task)
                self.spawn(task.msg.nak(delay=delay), "nak a task")
                self.retry_notes.add(
                    task.run.job_id, task.task_no, task.deliveries, delay, storable_error(value)
                )
                return
        item = result_item(task, kind, value)
        if kind == DONE:
            self.tally.ran(pipeline, "done")
            self.stats.ok += 1
        else:
            self.stats.failed += 1
            size = failure_size(item)
        # Held until recorded, however long: no deadline any more.
        self.keepalive.until(reply, NO_DEADLINE)
        self.outbox.add_item(task.run.job_id, item, reply, last=last, size=size)

    def retry_delay(self, task: Task) -> float:
        """Seconds before NATS delivers again `task`, which failed transiently: the
        backoff of its job (else pipeline, else settings) after this many deliveries."""
        s = self.settings
        base, cap = delay_terms(task.run.retry_delay, s.retry_delay_s, s.retry_delay_max_s)
        return retry_delay_s(task.deliveries, base, cap)

    async def _on_confirm(self, msg: Msg) -> None:
        # <inbox>.<serial>: the worker recorded the batch and acked its messages.
        with contextlib.suppress(ValueError):
            self.outbox.confirm(int(msg.subject.rsplit(".", 1)[1]))

    async def _on_again(self, msg: Msg) -> None:
        # <inbox>.<serial>.again: the worker could not record the batch.
        serial = serial_of_again(msg.subject)
        if serial is not None:
            self.outbox.again(serial)


def main(
    concurrency: int = 4, batch_size: int | None = None, pool: Pool = "processes"
) -> ProcessorStats:
    """Run a processor in this process until SIGTERM or SIGINT; exit 1 if a side task died."""
    processor = Processor(concurrency=concurrency, batch_size=batch_size, pool=pool)
    # What this process has loaded (modules, settings) lives as long as it does:
    # out of the collector's way, a full collection no longer walks it (one cost
    # ~0.03 s of CPU in a 20,000-task run, issue 26). Here, not in `run`: a
    # process that embeds a Processor (tests) keeps its own collector as it is.
    gc.freeze()

    async def serve() -> ProcessorStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, processor.stop)
        return await processor.run()

    stats = loops.run(serve())
    if processor.fatal is not None:
        raise SystemExit(1)
    return stats
