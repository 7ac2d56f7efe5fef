"""Feeds: which job streams this processor serves, and fetching their tasks.

A stream exists only while its job is started, and its description says
what a processor needs to serve it (pipeline, task time limit): processors
never read Postgres. The description is not trusted: anyone who can create
a stream can write one, so a stream whose pipeline this processor does not
allow (jobsys.pipelines.allow) is not served, whatever it says; that is logged once
per stream. New streams are heard of at once through jobsys's own notices
in the namespace (stream and consumer made, share rewritten, stream deleted:
jobsys.nats.subjects), so a processor hears of its deployment's jobs only;
a periodic listing of the namespace's job streams catches anything missed
(e.g. while NATS restarted, or a stream deleted by hand). A listing can
miss a live stream (it is paged by offset), so a feed it did not show is
dropped only when asking for that stream says it is gone. A deleted stream
(job finished or cancelled) stops its feed at once, and its queued tasks
never start.

A job's share of slots (priority, weight; jobsys.processor.shares) is read
from its stream's description when it is first served. `jobsys set` on a
running job rewrites that description (a stream update): processors hear
of it through the stream's UPDATED notice they already listen to and read
the stream again, and the periodic listing, which carries every stream's
description anyway, catches a notice missed. This was chosen over a
control subject of our own because the description stays the one place a
processor learns a job from: a processor that starts later, or reconnects,
reads the current share with nothing else to replay, and a re-created
stream (bootstrap, reconciler) is described from the job's row.

Each feed pulls its job's tasks, as many as execution wants ahead for that
job, after taking fair tickets (jobsys.processor.tickets), and not at all
while the outbox is full (backpressure). A feed whose pull came back empty
(its tasks wait on a retry delay, or another processor holds them) turns
to a probe: one long pull request for one message that holds no ticket
(its message takes one when it comes), so thousands of waiting jobs cost
the server one waiting request each and the tickets go to feeds with work.
Pull requests are sent by hand on an inbox of our own (nats-py's `fetch`
waits on each message with a timer of its own): each message goes to
execution as it is read (jobsys.processor.inboxes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobsys.models import MAX_REPLY_CHARS, PG_INT_MAX
from jobsys.nats.admin import (
    all_streams_info,
    max_deliver_of_stream,
    pipeline_of_stream,
    rate_of_stream,
    retry_delay_of_stream,
    share_of_stream,
    task_timeout_of_stream,
)
from jobsys.nats.notices import StreamTerms, parse_created_body
from jobsys.nats.subjects import (
    JobNames,
    job_id_of_stream,
    parse_job_notice,
    parse_msg_id,
    tasks_wildcard,
)
from jobsys.pipelines.allow import NotAllowed
from jobsys.pipelines.resolve import resolve_spec
from jobsys.processor.execute import Execution, JobRun, Task
from jobsys.processor.inboxes import Inboxes
from jobsys.processor.keepalive import KeepAlive
from jobsys.processor.outbox import Outbox
from jobsys.processor.tickets import Tickets
from jobsys.settings import Settings

log = logging.getLogger(__name__)

# A pull request expires after this long (an empty one holds its tickets
# that long at most, then the feed rests); the server then says so (408),
# and after PULL_SLACK_S more the feed stops waiting for that answer.
FETCH_TIMEOUT_S = 0.5
PULL_SLACK_S = 1.0
STATUS_HEADER = "Status"
# The server's answer when a pull request expired (any other ends it early).
EXPIRED_STATUS = "408"
# An empty feed's probe waits this long at the server for one message; the
# server hands it the message the moment one is there, so this bounds only
# how often an idle job costs a request, not how soon its work is seen.
IDLE_PROBE_S = 30.0
# After a pull that failed or was ended early by the server (not expired),
# the feed rests this long, doubling up to the second figure.
IDLE_BACKOFF_S = (0.1, 2.0)
BACKPRESSURE_POLL_S = 0.05


@dataclass(eq=False)
class _Pull:
    """One pull request: `n` messages asked for, `held` tickets taken for them in
    advance (a probe takes none), `got` so far, and the server's status if it
    ended the request."""

    n: int
    held: int
    got: int = 0
    status: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class Feed:
    """One job's stream as this processor serves it."""

    run: JobRun
    names: JobNames
    ack_wait_s: float
    task: asyncio.Task[None] | None = None
    pull: _Pull | None = None
    # What the newest delivery said was left to deliver (None: none came yet).
    pending: int | None = None


class Feeds:
    """The feeds of this processor: discovery, fetching, dropping."""

    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        execution: Execution,
        tickets: Tickets,
        keepalive: KeepAlive,
        outbox: Outbox,
        stopping: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, Any], str], object],
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.execution = execution
        self.tickets = tickets
        self.keepalive = keepalive
        self.outbox = outbox
        self.stopping = stopping
        self.spawn = spawn
        self.feeds: dict[int, Feed] = {}
        # Streams not served, with the pipeline they name: said once, not
        # looked at again until the stream is gone (a new one is judged anew).
        self.refused: dict[int, str] = {}
        # Streams whose pipeline could not be loaded here, said once (retried).
        self.unavailable: dict[int, str] = {}
        self.backpressure_waits = 0
        # Tasks of each job handed to execution and not settled yet (the
        # outbox sends a job's batch at once when this falls to 0).
        self.holding: collections.Counter[int] = collections.Counter()
        self.inboxes = Inboxes(nc)

    # -- which jobs to serve -------------------------------------------------

    async def on_notice(self, msg: Msg) -> None:
        """A job stream notice, NS.jobs.<CREATED|UPDATED|DELETED>.<stream>
        (jobsys.nats.subjects)."""
        parsed = parse_job_notice(self.settings.namespace, msg.subject)
        if parsed is None:
            return
        action, job_id = parsed
        if action == "DELETED":
            self.refused.pop(job_id, None)
            self.unavailable.pop(job_id, None)
            self.drop(job_id, "stream deleted")
        elif action == "CREATED":
            await self.add(job_id, terms=parse_created_body(msg.data))
        elif action == "UPDATED" and job_id in self.feeds:
            # `jobsys set` changed the job's share (or a re-bootstrap its config).
            try:
                info = await self.js.stream_info(
                    JobNames.of(self.settings.namespace, job_id).stream
                )
            except Exception as exc:
                log.info("cannot re-read a stream", extra={"job_id": job_id, "error": repr(exc)})
                return
            self.reshare(job_id, info.config.description)

    async def listing_loop(self) -> None:
        """Backstop for missed notices (a side task of the processor). Lists
        only this namespace's job streams; a feed missing from a listing is
        dropped only once its stream is confirmed gone (`_gone`)."""
        namespace = self.settings.namespace
        while True:
            try:
                seen = set()
                for info in await all_streams_info(self.js, tasks_wildcard(namespace)):
                    job_id = job_id_of_stream(namespace, info.config.name or "")
                    if job_id is None:
                        continue
                    seen.add(job_id)
                    if job_id not in self.feeds:
                        await self.add(job_id, info.config.description)
                    else:
                        self.reshare(job_id, info.config.description)
                for job_id in [j for j in self.feeds if j not in seen]:
                    if await self._gone(job_id):
                        self.drop(job_id, "stream gone")
                for judged in (self.refused, self.unavailable):
                    for job_id in [j for j in judged if j not in seen]:
                        del judged[job_id]
            except Exception as exc:
                log.warning("stream listing failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.settings.stream_listing_s)

    async def _gone(self, job_id: int) -> bool:
        """Whether the job's stream is gone, asked of the server for that stream
        (a paged listing can miss a live one). Unsure (an error) is not gone."""
        try:
            await self.js.stream_info(JobNames.of(self.settings.namespace, job_id).stream)
        except NotFoundError:
            return True
        except Exception as exc:
            log.info("cannot confirm a stream", extra={"job_id": job_id, "error": repr(exc)})
        return False

    async def add(
        self, job_id: int, description: str | None = None, terms: StreamTerms | None = None
    ) -> None:
        """Serve the job if its stream and consumer are there and its pipeline is
        allowed and available here. `terms` (a CREATED notice's) say the stream's
        description and the consumer's figures without asking the server."""
        if job_id in self.feeds or job_id in self.refused or self.stopping():
            return
        names = JobNames.of(self.settings.namespace, job_id)
        if terms is not None:
            description = terms.description
        try:
            if description is None:
                description = (await self.js.stream_info(names.stream)).config.description
        except NotFoundError:
            return  # gone already
        except Exception as exc:
            log.warning("cannot serve job", extra={"job_id": job_id, "error": repr(exc)})
            return
        if job_id in self.feeds or job_id in self.refused or self.stopping():
            return
        pipeline_name = pipeline_of_stream(description)
        if pipeline_name is None:
            log.warning("job stream names no pipeline", extra={"job_id": job_id})
            return
        try:
            spec = resolve_spec(pipeline_name)
        except NotAllowed as exc:
            # Judged before the consumer is even looked at; said once, never retried.
            self.refused[job_id] = pipeline_name
            log.error(
                "pipeline not allowed: stream not served",
                extra={"job_id": job_id, "pipeline": pipeline_name, "error": str(exc)},
            )
            return
        except Exception as exc:
            # Not importable here (yet): tried again at each listing, said once.
            if self.unavailable.get(job_id) != pipeline_name:
                self.unavailable[job_id] = pipeline_name
                log.error(
                    "pipeline unavailable on this processor",
                    extra={"job_id": job_id, "pipeline": pipeline_name, "error": str(exc)},
                )
            return
        self.unavailable.pop(job_id, None)
        if terms is None:
            try:
                consumer = await self.js.consumer_info(names.stream, names.consumer)
            except NotFoundError:
                return  # bootstrap has not created the consumer yet; the listing retries
            except Exception as exc:
                log.warning("cannot serve job", extra={"job_id": job_id, "error": repr(exc)})
                return
            terms = StreamTerms(
                description or "",
                consumer.config.max_deliver or self.settings.max_deliver,
                float(consumer.config.ack_wait or self.settings.ack_wait_s),
            )
        if job_id in self.feeds or self.stopping():
            return
        run = JobRun(
            job_id=job_id,
            pipeline=pipeline_name,
            spec=spec,
            timeout_s=task_timeout_of_stream(description) or self.settings.task_timeout_s,
            # The job's own (the consumer allows a few more: nats.admin.DELIVERY_SLACK).
            max_deliver=max_deliver_of_stream(description) or terms.max_deliver,
            retry_delay=retry_delay_of_stream(description) or spec.retry_delay,
            gate=self.execution.rates.gate_for(job_id, pipeline_name, rate_of_stream(description))
            if self.execution.rates is not None
            else None,
        )
        self.execution.share(run, *share_of_stream(description))
        feed = Feed(run, names, terms.ack_wait_s)
        if spec.batch_size:
            self.tickets.grow(2 * spec.batch_size)
        self.feeds[job_id] = feed
        self.outbox.job_served(job_id)
        feed.task = asyncio.create_task(self._fetch_loop(feed), name=f"feed {job_id}")
        feed.task.add_done_callback(functools.partial(self._feed_ended, feed))
        log.info(
            "serving job",
            extra={"job_id": job_id, "pipeline": pipeline_name, "timeout_s": run.timeout_s,
                   "priority": run.priority, "weight": run.weight},
        )  # fmt: skip

    def reshare(self, job_id: int, description: str | None) -> None:
        """The job's stream says its priority and weight are these now."""
        feed = self.feeds.get(job_id)
        if feed is None:
            return
        priority, weight = share_of_stream(description)
        run = feed.run
        if (priority, weight) != (run.priority, run.weight):
            log.info(
                "job share changed",
                extra={"job_id": job_id, "priority": priority, "weight": weight,
                       "was_priority": run.priority, "was_weight": run.weight},
            )  # fmt: skip
            self.execution.share(run, priority, weight)

    def drop(self, job_id: int, why: str) -> None:
        """Stop serving the job: no more fetches, its queued tasks never start."""
        feed = self.feeds.pop(job_id, None)
        if feed is None:
            return
        feed.run.active = False
        if feed.task is not None:
            feed.task.cancel()
        self.execution.forget(job_id)
        # Results already computed still go out: the job may be canceling
        # (its work may be recorded) or a late batch is simply not counted.
        self.outbox.job_gone(job_id)
        log.info("stopped serving job", extra={"job_id": job_id, "reason": why})

    def wake_probes(self) -> None:
        """NATS came back: the probes it held are forgotten; every empty feed asks
        again now rather than after IDLE_PROBE_S."""
        for feed in self.feeds.values():
            pull = feed.pull
            if pull is not None and pull.held == 0:
                pull.done.set()

    def stop_all(self) -> None:
        """Shutdown: stop every fetch (queued tasks are handed back by execution)."""
        for feed in self.feeds.values():
            if feed.task is not None:
                feed.task.cancel()

    def _feed_ended(self, feed: Feed, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stopping():
            return
        exc = task.exception()
        if exc is not None:
            # Loudly, and served again: the listing re-adds it within seconds.
            log.error(
                "feed died; serving its job again",
                extra={"job_id": feed.run.job_id, "error": repr(exc)},
                exc_info=exc,
            )
        if self.feeds.get(feed.run.job_id) is feed:
            self.drop(feed.run.job_id, "feed ended")

    # -- fetching ------------------------------------------------------------

    async def _fetch_loop(self, feed: Feed) -> None:
        """Pull requests, one at a time; their messages are handled as they arrive
        (`_on_msg`), so execution starts on the first while the rest come in."""
        run = feed.run
        inbox = self.nc.new_inbox()
        sub = await self.inboxes.subscribe(inbox, functools.partial(self._on_msg, feed))
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{feed.names.stream}.{feed.names.consumer}"
        rest = IDLE_BACKOFF_S[0]
        idle = False
        try:
            while run.active and not self.stopping():
                if self.outbox.full:
                    # Results are not being recorded: taking more work would
                    # only let more tasks wait (see jobsys.processor.outbox).
                    self.backpressure_waits += 1
                    await asyncio.sleep(BACKPRESSURE_POLL_S)
                    continue
                await self.execution.wait_for_room(run)
                if not run.active:
                    break
                if idle:
                    # The last pull came back empty: probe for one message
                    # without a ticket, so idle jobs never sit on tickets (or
                    # wait in their queue) ahead of jobs with work.
                    pull = feed.pull = _Pull(1, held=0)
                    expires_s = IDLE_PROBE_S
                else:
                    want = max(1, self.execution.ahead(run) - self.execution.queued(run.job_id))
                    n = await self.tickets.take(want, run.priority)
                    pull = feed.pull = _Pull(n, held=n)
                    expires_s = FETCH_TIMEOUT_S
                request = {"batch": pull.n, "expires": int(expires_s * 1e9)}
                try:
                    await self.nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(pull.done.wait(), expires_s + PULL_SLACK_S)
                except asyncio.CancelledError:
                    # Dropped mid-pull: tickets not handed back here are gone
                    # for good, and once all are gone no feed can fetch.
                    self._end_pull(feed, pull)
                    raise
                except Exception as exc:
                    self._end_pull(feed, pull)
                    log.info("pull failed", extra={"job_id": run.job_id, "error": repr(exc)})
                    await asyncio.sleep(rest)
                    rest = min(rest * 2, IDLE_BACKOFF_S[1])
                    continue
                came = self._end_pull(feed, pull)
                # Nothing left to deliver (the last message said so): probe
                # rather than hold tickets for a full pull that would wait.
                idle = came == 0 or feed.pending == 0
                if idle and pull.status not in (None, EXPIRED_STATUS):
                    # Ended early by the server (consumer gone, too many
                    # waiting requests): do not ask again at once.
                    await asyncio.sleep(rest)
                    rest = min(rest * 2, IDLE_BACKOFF_S[1])
                else:
                    rest = IDLE_BACKOFF_S[0]
        finally:
            with contextlib.suppress(Exception):
                await self.inboxes.unsubscribe(sub)

    def _end_pull(self, feed: Feed, pull: _Pull) -> int:
        """The request is answered, expired or abandoned: unused tickets go back.
        Returns how many messages it brought."""
        if feed.pull is pull:
            feed.pull = None
        came = pull.got
        self.tickets.give(max(pull.held - came, 0))
        pull.got = pull.n  # late messages of it now take tickets of their own
        return came

    def _on_msg(self, feed: Feed, msg: Msg) -> None:
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        pull = feed.pull
        if status is not None:
            # 408 expired, 404 nothing there, 409 consumer deleted or a limit:
            # the request is over either way.
            if pull is not None:
                pull.status = status
                pull.done.set()
            return
        pending = feed.pending = pending_of(msg.reply)
        if pull is not None and pull.got < pull.n:
            pull.got += 1
            if pull.got > pull.held:
                self.tickets.force(1)  # a probe's message: it took no ticket ahead
            if pull.got >= pull.n or pending == 0:
                # Full, or the stream has nothing more to deliver now: the
                # server would hold the request (and this feed its unused
                # tickets) until it expires. 10,000 jobs each waiting on a
                # retry held all tickets that way in turn, and a new job
                # queued behind them for minutes.
                pull.done.set()
        else:
            self.tickets.force(1)  # answers a request we stopped waiting for
        if not feed.run.active:
            self.tickets.give(1)  # dropped: it never starts (its stream is gone)
            return
        task = self._task(feed, msg)
        if task is not None:
            self.holding[feed.run.job_id] += 1
            self.execution.submit_one(task)

    def settled(self, job_id: int) -> bool:
        """One task of the job is settled; whether it was the last one held here
        and the stream had no other task to deliver (its batch can go at once)."""
        left = self.holding[job_id] - 1
        if left > 0:
            self.holding[job_id] = left
            return False
        del self.holding[job_id]
        # While the stream still held undelivered tasks at the newest delivery,
        # more are coming, here or to another processor, and the batch waits
        # for the flush timer: sealed at every pull, a job shared with many
        # others went out one or two results a batch, each a Dramatiq
        # message, a transaction and a round of acks (issue 20: 6.6 batches
        # per 20-task job).
        feed = self.feeds.get(job_id)
        return feed is None or feed.pending == 0

    def _task(self, feed: Feed, msg: Msg) -> Task | None:
        # Checked here, where it comes in, as a result item needs them (the
        # processor builds its items without a model: processor.result_item).
        ids = parse_msg_id((msg.headers or {}).get("Nats-Msg-Id"))
        reply = msg.reply
        if (
            ids is None
            or ids[0] != feed.run.job_id
            or ids[1] > PG_INT_MAX
            or not 0 < len(reply) <= MAX_REPLY_CHARS
        ):
            # Not a task message of this job: nothing can ever process it.
            log.warning("foreign message terminated", extra={"job_id": feed.run.job_id})
            self.spawn(msg.term(), "terminate a foreign message")
            self.tickets.give(1)
            return None
        deliveries = delivered_of(reply) or msg.metadata.num_delivered or 1
        self.keepalive.hold(reply, feed.ack_wait_s)
        return Task(feed.run, ids[1], msg, min(max(deliveries, 1), PG_INT_MAX))


def pending_of(reply: str) -> int | None:
    """The consumer's count of undelivered messages in a JetStream ack subject,
    as of this delivery (None if the subject is not one)."""
    tokens = reply.split(".")
    n = len(tokens)
    value = tokens[8] if n == 9 else tokens[10] if n >= 11 else ""
    return int(value) if value.isdigit() else None


def delivered_of(reply: str) -> int | None:
    """The delivery count in a JetStream ack subject (see `queue.parse_ack_subject`,
    which says more, at a cost paid here for every task)."""
    tokens = reply.split(".")
    n = len(tokens)
    value = tokens[4] if n == 9 else tokens[6] if n >= 11 else ""
    return int(value) if value.isdigit() else None
