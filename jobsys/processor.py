"""The processing worker (`jobsys process`): NATS tasks in, Dramatiq result batches out.

It serves every job stream of the namespace (a stream exists only while its
job is started), fairly: before fetching, a job's feed takes tickets from a
shared FIFO semaphore, so a new job's feed queues behind at most one turn of
each older job instead of behind its whole backlog. Pipelines run on a thread
pool. Results are batched per job and sent to the `process_results` actor
with the reply subjects of their messages: the processor never acks a task
itself; the actor acks after the results are committed.

Results are held until recorded: a batch stays with the processor, its
messages kept in progress in NATS, until the worker that recorded and acked
it says so on the processor's own inbox subject. If the batch cannot be sent
(Redis down) or no confirmation comes (Redis lost it), it is sent again. So a
task whose pipeline ran is not delivered again just because recording its
result is slow or stalled -- JetStream counts every delivery against
max_deliver, and enough such waits would exhaust tasks that succeeded. A
processor holding JOBSYS_MAX_HELD_RESULTS stops fetching (backpressure); a
batch held JOBSYS_RESULT_HOLD_S is let go, so NATS redelivers it.

Cancel: teardown deletes the job's stream. The processor hears the
JetStream stream-deleted advisory at once (and a periodic listing catches
anything missed), and every queued task checks its job is still served at
the moment a thread picks it up, so a cancelled job's tasks stop starting
within milliseconds.

SIGTERM/SIGINT: stop fetching, finish running tasks, hand back (nak) the ones
not started, flush results, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobsys.errors import PermanentError
from jobsys.pipelines import Pipeline, resolve
from jobsys.queue import (
    JobNames,
    all_streams_info,
    connect,
    jetstream,
    job_id_of_stream,
    parse_msg_id,
    pipeline_of_stream,
)
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# An empty fetch holds its tickets this long at most, then the feed rests.
FETCH_TIMEOUT_S = 0.5
IDLE_BACKOFF_S = (0.1, 2.0)
SEND_ATTEMPTS = 3
LISTING_EVERY_S = 2.0


class _Skipped(Exception):
    """A queued task was not started: its job is gone or we are stopping."""


@dataclass
class Feed:
    """One job's stream as this processor serves it."""

    job_id: int
    names: JobNames
    pipeline_name: str
    fn: Pipeline
    max_deliver: int
    active: bool = True
    task: asyncio.Task[None] | None = None
    buffer: list[dict[str, Any]] = field(default_factory=list)
    buffer_since: float = 0.0


@dataclass
class Held:
    """A result batch sent (or to be sent) and not yet confirmed as recorded."""

    job_id: int
    items: list[dict[str, Any]]
    since: float
    sent_at: float | None = None
    pinged_at: float = 0.0


@dataclass
class ProcessorStats:
    """Counters a processor keeps about itself (logged at exit, read by tests/bench)."""

    ran: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    batches_sent: int = 0
    batches_confirmed: int = 0
    batches_resent: int = 0
    batches_released: int = 0


class Processor:
    """Pulls task messages of all started jobs, runs pipelines, sends result batches."""

    def __init__(
        self,
        concurrency: int = 4,
        batch_size: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.concurrency = concurrency
        self.batch_size = batch_size or self.settings.result_batch_size
        self.feeds: dict[int, Feed] = {}
        self.stats = ProcessorStats()
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="jobsys-task")
        # Runs pipelines' sends to Redis off the event loop, one at a time.
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="jobsys-send")
        self._stopping = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tickets: asyncio.Semaphore | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._max_tickets = max(concurrency * 2, 4)
        self._chunk = max(1, self._max_tickets // 2)
        self._held: dict[int, Held] = {}
        self._held_results = 0
        self._serial = 0
        self._notify_prefix = ""
        self._send_failing = False
        # Messages whose pipeline is running -> when last kept alive.
        self._running: dict[int, tuple[Msg, float]] = {}

    # -- lifecycle ---------------------------------------------------------

    def stop(self) -> None:
        """Ask the processor to stop gracefully (thread-safe)."""
        self._stopping.set()
        loop_event = self._stop_event
        if loop_event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(loop_event.set)

    async def run(self) -> ProcessorStats:
        """Serve until `stop()` (or SIGTERM/SIGINT when installed by `main`)."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stopping.is_set():
            self._stop_event.set()
        self._tickets = asyncio.Semaphore(self._max_tickets)
        self._nc = await connect(self.settings.nats_url, name="jobsys-processor")
        self._js = jetstream(self._nc, self.settings)
        # Wildcards match whole tokens only; other namespaces' streams are
        # filtered out by name in the callback.
        await self._nc.subscribe("$JS.EVENT.ADVISORY.STREAM.*.*", cb=self._on_stream_advisory)
        # Bootstrap creates the consumer just after the stream: that is when
        # a new job can be served.
        await self._nc.subscribe(
            "$JS.EVENT.ADVISORY.CONSUMER.CREATED.*.*", cb=self._on_stream_advisory
        )
        self._notify_prefix = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._notify_prefix}.*", cb=self._on_confirm)
        log.info(
            "processor started",
            extra={"concurrency": self.concurrency, "batch_size": self.batch_size},
        )
        helpers = [
            asyncio.create_task(self._listing_loop()),
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self._hold_loop()),
        ]
        await self._stop_event.wait()
        await self._shutdown(helpers)
        return self.stats

    async def _shutdown(self, helpers: list[asyncio.Task[None]]) -> None:
        self._stopping.set()
        for feed in self.feeds.values():
            if feed.task is not None:
                feed.task.cancel()
        # Tasks already running finish; queued ones see _stopping and are nak'ed.
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.settings.ack_wait_s)
        for task in helpers:
            task.cancel()
        for feed in list(self.feeds.values()):
            await self._flush(feed)
        # Not waiting for confirmations: whatever is not recorded is simply
        # delivered again after ack_wait. Batches never sent get a last try.
        for serial, held in list(self._held.items()):
            if held.sent_at is None:
                await self._send(serial, held, attempts=SEND_ATTEMPTS)
        self._sender.shutdown(wait=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        assert self._nc is not None
        # flush + close, not drain: drain waits up to 30 s on subscriptions
        # we no longer care about; the naks above must reach the server.
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=5)
        with contextlib.suppress(Exception):
            await self._nc.close()
        log.info("processor stopped", extra=vars(self.stats))

    # -- which jobs to serve -----------------------------------------------

    async def _on_stream_advisory(self, msg: Msg) -> None:
        # $JS.EVENT.ADVISORY.STREAM.<CREATED|DELETED|UPDATED>.<stream>
        # $JS.EVENT.ADVISORY.CONSUMER.CREATED.<stream>.<consumer>
        parts = msg.subject.split(".")
        if len(parts) < 6:
            return
        action, stream = parts[4], parts[5]
        job_id = job_id_of_stream(self.settings.namespace, stream)
        if job_id is None:
            return
        if action == "DELETED":
            self._drop(job_id, "stream deleted")
        elif action == "CREATED":
            await self._add(job_id)

    async def _listing_loop(self) -> None:
        """Backstop for missed advisories (e.g. while NATS was restarting)."""
        assert self._js is not None
        while not self._stopping.is_set():
            try:
                seen = set()
                for info in await all_streams_info(self._js):
                    job_id = job_id_of_stream(self.settings.namespace, info.config.name or "")
                    if job_id is None:
                        continue
                    seen.add(job_id)
                    if job_id not in self.feeds:
                        await self._add(job_id, info.config.description)
                for job_id in list(self.feeds):
                    if job_id not in seen:
                        self._drop(job_id, "stream gone")
            except Exception as exc:
                log.warning("stream listing failed", extra={"error": repr(exc)})
            await asyncio.sleep(LISTING_EVERY_S)

    async def _add(self, job_id: int, description: str | None = None) -> None:
        if job_id in self.feeds or self._stopping.is_set():
            return
        assert self._js is not None
        names = JobNames.of(self.settings.namespace, job_id)
        try:
            if description is None:
                description = (await self._js.stream_info(names.stream)).config.description
            consumer = await self._js.consumer_info(names.stream, names.consumer)
        except NotFoundError:
            return  # bootstrap has not created the consumer yet; the listing retries
        except Exception as exc:
            log.warning("cannot serve job", extra={"job_id": job_id, "error": repr(exc)})
            return
        if job_id in self.feeds:
            return
        pipeline_name = pipeline_of_stream(description)
        if pipeline_name is None:
            log.warning("job stream names no pipeline", extra={"job_id": job_id})
            return
        try:
            fn = resolve(pipeline_name)
        except Exception as exc:
            log.error(
                "pipeline unavailable on this processor",
                extra={"job_id": job_id, "pipeline": pipeline_name, "error": str(exc)},
            )
            return
        feed = Feed(
            job_id=job_id,
            names=names,
            pipeline_name=pipeline_name,
            fn=fn,
            max_deliver=consumer.config.max_deliver or self.settings.max_deliver,
        )
        self.feeds[job_id] = feed
        feed.task = asyncio.create_task(self._feed_loop(feed))
        log.info("serving job", extra={"job_id": job_id, "pipeline": pipeline_name})

    def _drop(self, job_id: int, why: str) -> None:
        feed = self.feeds.pop(job_id, None)
        if feed is None:
            return
        feed.active = False
        if feed.task is not None:
            feed.task.cancel()
        log.info("stopped serving job", extra={"job_id": job_id, "reason": why})
        # Results already computed still go out: the job may be canceling
        # (its work may be recorded) or a late batch is simply not counted.
        if feed.buffer:
            asyncio.get_running_loop().create_task(self._flush(feed))

    # -- fetching ----------------------------------------------------------

    async def _take_tickets(self, limit: int) -> int:
        assert self._tickets is not None
        await self._tickets.acquire()
        n = 1
        while n < limit and not self._tickets.locked():
            await self._tickets.acquire()
            n += 1
        return n

    def _give_tickets(self, n: int) -> None:
        assert self._tickets is not None
        for _ in range(n):
            self._tickets.release()

    async def _feed_loop(self, feed: Feed) -> None:
        assert self._js is not None
        sub = await self._js.pull_subscribe_bind(
            consumer=feed.names.consumer, stream=feed.names.stream
        )
        rest = IDLE_BACKOFF_S[0]
        idle = False
        try:
            while feed.active and not self._stopping.is_set():
                if self._held_results >= self.settings.max_held_results:
                    # Results are not being recorded: taking more work would
                    # only let more tasks wait (see the module docstring).
                    await asyncio.sleep(0.05)
                    continue
                # A feed whose last fetch came back empty probes with one
                # ticket, so idle jobs do not sit on tickets busy ones need.
                n = await self._take_tickets(1 if idle else self._chunk)
                try:
                    msgs = await sub.fetch(n, timeout=FETCH_TIMEOUT_S)
                except asyncio.CancelledError:
                    # Dropped mid-fetch (its stream was deleted): tickets not
                    # handed back here are gone for good, and once all are
                    # gone every other feed stops fetching.
                    self._give_tickets(n)
                    raise
                except (TimeoutError, nats.errors.TimeoutError):
                    msgs = []
                except NotFoundError:
                    self._give_tickets(n)
                    self._drop(feed.job_id, "consumer gone")
                    return
                except Exception as exc:
                    self._give_tickets(n)
                    log.info("fetch failed", extra={"job_id": feed.job_id, "error": repr(exc)})
                    await asyncio.sleep(rest)
                    rest = min(rest * 2, IDLE_BACKOFF_S[1])
                    continue
                self._give_tickets(n - len(msgs))
                idle = not msgs
                if idle:
                    await asyncio.sleep(rest)
                    rest = min(rest * 2, IDLE_BACKOFF_S[1])
                    continue
                rest = IDLE_BACKOFF_S[0]
                for msg in msgs:
                    task = asyncio.create_task(self._run_one(feed, msg))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- running -----------------------------------------------------------

    def _call(self, feed: Feed, payload: dict[str, Any]) -> dict[str, Any]:
        # Checked when a thread picks the task up, not when it was queued:
        # this is what keeps a cancelled job's tasks from starting.
        if self._stopping.is_set() or not feed.active:
            raise _Skipped()
        return feed.fn(payload)

    async def _run_one(self, feed: Feed, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        try:
            ids = parse_msg_id((msg.headers or {}).get("Nats-Msg-Id"))
            if ids is None or ids[0] != feed.job_id:
                # Not a task message of this job: nothing can ever process it.
                log.warning("foreign message terminated", extra={"job_id": feed.job_id})
                await msg.term()
                return
            task_no = ids[1]
            deliveries = msg.metadata.num_delivered or 1
            try:
                payload = json.loads(msg.data)
                if not isinstance(payload, dict):
                    raise PermanentError("task payload is not a JSON object")
                fut = loop.run_in_executor(self._executor, self._call, feed, payload)
                # The hold loop keeps it in progress while it runs: one shared
                # ticker instead of a timer per task.
                self._running[id(msg)] = (msg, time.monotonic())
                try:
                    result = await fut
                finally:
                    del self._running[id(msg)]
                if not isinstance(result, dict):
                    raise PermanentError(
                        f"pipeline returned {type(result).__name__}, not a JSON object"
                    )
                size = len(json.dumps(result))
                if size > self.settings.max_result_bytes:
                    raise PermanentError(
                        f"result of {size:,} bytes exceeds the "
                        f"{self.settings.max_result_bytes:,} byte limit"
                    )
            except _Skipped:
                self.stats.skipped += 1
                if feed.active:
                    await msg.nak()  # stopping: hand it to another processor now
                return
            except PermanentError as exc:
                self._add_result(feed, task_no, msg, deliveries, error=str(exc) or "failed")
                return
            except Exception as exc:
                if deliveries >= feed.max_deliver:
                    error = f"gave up after {deliveries} deliveries: {exc!r}"
                    self._add_result(feed, task_no, msg, deliveries, error=error)
                else:
                    self.stats.retried += 1
                    await msg.nak(delay=self.settings.nak_delay_s)
                return
            self._add_result(feed, task_no, msg, deliveries, result=result)
        except Exception as exc:
            log.warning("task handling failed", extra={"job_id": feed.job_id, "error": repr(exc)})
        finally:
            self._give_tickets(1)

    def _add_result(
        self,
        feed: Feed,
        task_no: int,
        msg: Msg,
        deliveries: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        self.stats.ran += 1
        if error is None:
            self.stats.ok += 1
        else:
            self.stats.failed += 1
        if not feed.buffer:
            feed.buffer_since = time.monotonic()
        feed.buffer.append(
            {
                "task": task_no,
                "status": "done" if error is None else "failed",
                "result": result,
                "error": error,
                "reply": msg.reply,
                "deliveries": deliveries,
            }
        )
        # A dropped feed (its job was cancelled) is no longer flushed by the
        # flush loop: send at once, so the worker records these late results
        # (event `late_results`, never counted) instead of them vanishing.
        if len(feed.buffer) >= self.batch_size or not feed.active:
            asyncio.get_running_loop().create_task(self._flush(feed))

    # -- sending results ---------------------------------------------------

    async def _flush_loop(self) -> None:
        period = self.settings.result_flush_ms / 1000
        while True:
            await asyncio.sleep(period / 2)
            now = time.monotonic()
            for feed in list(self.feeds.values()):
                if feed.buffer and now - feed.buffer_since >= period:
                    await self._flush(feed)

    async def _flush(self, feed: Feed) -> None:
        if not feed.buffer:
            return
        items, feed.buffer = feed.buffer, []
        self._serial += 1
        held = Held(job_id=feed.job_id, items=items, since=time.monotonic())
        self._held[self._serial] = held
        self._held_results += len(items)
        await self._send(self._serial, held, attempts=1)

    async def _send(self, serial: int, held: Held, attempts: int) -> bool:
        loop = asyncio.get_running_loop()
        notify = f"{self._notify_prefix}.{serial}"
        for attempt in range(1, attempts + 1):
            try:
                await loop.run_in_executor(
                    self._sender, _send_results, held.job_id, held.items, notify
                )
            except Exception as exc:
                # One warning per outage, not one per batch per retry.
                (log.debug if self._send_failing else log.warning)(
                    "result batches cannot be sent; holding them",
                    extra={"job_id": held.job_id, "held": self._held_results, "error": repr(exc)},
                )
                self._send_failing = True
                if attempt < attempts:
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
                continue
            if self._send_failing:
                self._send_failing = False
                log.info("result batches sent again", extra={"held": self._held_results})
            if held.sent_at is not None:
                self.stats.batches_resent += 1
            held.sent_at = time.monotonic()
            self.stats.batches_sent += 1
            return True
        return False

    def _release(self, serial: int) -> Held | None:
        held = self._held.pop(serial, None)
        if held is not None:
            self._held_results -= len(held.items)
        return held

    async def _on_confirm(self, msg: Msg) -> None:
        # <inbox>.<serial>: the worker recorded the batch and acked its messages.
        with contextlib.suppress(ValueError):
            if self._release(int(msg.subject.rsplit(".", 1)[1])) is not None:
                self.stats.batches_confirmed += 1

    async def _hold_loop(self) -> None:
        """Keep running tasks' and held batches' messages in progress; re-send unsent or
        unconfirmed batches."""
        ack_wait = self.settings.ack_wait_s
        ping_every = ack_wait / 3
        resend_after = min(max(2 * ack_wait, 1.0), 60.0)
        assert self._nc is not None
        while True:
            await asyncio.sleep(max(ack_wait / 6, 0.05))
            now = time.monotonic()
            pinged = False
            for key, (msg, since) in list(self._running.items()):
                if now - since >= ping_every and key in self._running:
                    self._running[key] = (msg, now)
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
            for serial, held in list(self._held.items()):
                if now - held.since >= self.settings.result_hold_s:
                    self._release(serial)
                    self.stats.batches_released += 1
                    log.warning(
                        "result batch released unconfirmed; NATS will redeliver it",
                        extra={"job_id": held.job_id, "tasks": len(held.items)},
                    )
                elif now - max(held.since, held.pinged_at) >= ping_every:
                    held.pinged_at = now
                    with contextlib.suppress(Exception):
                        for item in held.items:
                            await self._nc.publish(item["reply"], b"+WPI")
                        pinged = True
            if pinged:
                with contextlib.suppress(Exception):
                    await self._nc.flush(timeout=5)
            # Pings first: a send may block on an unreachable Redis. After
            # one failure the rest wait for the next round.
            for serial, held in list(self._held.items()):
                due = held.sent_at is None or now - held.sent_at >= resend_after
                if due and serial in self._held and not await self._send(serial, held, 1):
                    break


def _send_results(job_id: int, items: list[dict[str, Any]], notify: str) -> None:
    from jobsys.actors import process_results

    process_results.send(job_id, items, notify)


def main(concurrency: int = 4, batch_size: int | None = None) -> ProcessorStats:
    """Run a processor in this process until SIGTERM or SIGINT."""
    processor = Processor(concurrency=concurrency, batch_size=batch_size)

    async def serve() -> ProcessorStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, processor.stop)
        return await processor.run()

    return asyncio.run(serve())
