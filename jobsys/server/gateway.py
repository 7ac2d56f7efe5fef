"""The task gateway: remote processors lease task messages over HTTP; the server holds them.

For remote processors the server is a processor in NATS's eyes. It pulls a
job's task messages from its durable consumer (`lease`), keeps them in
progress while their lease lives (jobsys.processor.keepalive, the native
processor's ticker), and hands them back (`-NAK`) when a lease lapses: a
remote processor that died, or was cut off, holds its tasks for at most
JOBSYS_GATEWAY_LEASE_S, not for ack_wait times max_deliver. Each task goes
out with an unforgeable handle (jobsys.server.leases).

A report names each outcome by its handle. Outcomes go into the native
processor's outbox (jobsys.processor.outbox): batched, sent to the
`process_results` actor with this server's confirmation subject, held in
progress until a worker recorded and acked them, sent again if Redis lost
them. So a remote result is counted by the very code that counts a native
one: bound to the leased message, moved `pending -> done|failed` once. A
transient failure is handed back to NATS (after a backoff from JOBSYS_RETRY_DELAY_S) unless it
was the task's last delivery, which fails it; a permanent one fails it.

Leases live in the server process that granted them. A report or an extend
reaching a server that does not hold the lease (restarted, or another
`--workers` process) is still safe: a report counts through the handle's
reply subject; an extend adopts the lease (unless it ended here: lapsed,
reported, handed back), so a restarted server keeps running tasks in
progress. A process that adopts a lease, or takes its report, says so on the
namespace's "taken" subject, and the process that held it lets go of it
without handing it back: else, with `--workers 2`, the granting process's
copy of a lease extended only through the other would lapse and hand a
running task back to NATS. A server that stops hands nothing back: its
leases' processors go on and extend with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobsys.api.leasing import Terms, job_terms
from jobsys.dramatiq.rate_buckets import Bucket, RateBuckets, bucket
from jobsys.errors import ServiceUnavailable
from jobsys.models import TaskResult
from jobsys.nats.connect import connect, jetstream
from jobsys.nats.subjects import (
    JobNames,
    again_subject,
    job_notices,
    leases_taken_subject,
    parse_job_notice,
    parse_msg_id,
    serial_of_again,
)
from jobsys.processor.keepalive import NO_DEADLINE, KeepAlive
from jobsys.processor.outbox import Outbox
from jobsys.server.leases import Handle, make_handle
from jobsys.settings import Settings

log = logging.getLogger(__name__)

# How often lapsed leases are looked for.
LAPSE_TICK_S = 0.5
# How long a pull subscription of a job nobody leased from is kept.
IDLE_PULL_S = 60.0
# The gateway's outbox stops leases at this many times JOBSYS_MAX_HELD_RESULTS.
HELD_FACTOR = 10
# Settled replies one server process remembers (extends after that are adopted).
SETTLED_KEPT = 200_000
# Jobs whose terms one server process keeps.
TERMS_CACHED = 10_000


@dataclass
class Lease:
    """One task message held for a remote processor."""

    job_id: int
    task_no: int
    deadline: float
    holder: str


@dataclass
class Leased:
    """One task as the lease call answers it."""

    handle: str
    task_no: int
    deliveries: int
    data: bytes


@dataclass
class _Pull:
    sub: JetStreamContext.PullSubscription
    lock: asyncio.Lock
    used: float


class Gateway:
    """The gateway's state in one server process: its NATS connection, the leases it
    holds, the outbox of reported results (see the module docstring)."""

    def __init__(self, settings: Settings, secret: bytes) -> None:
        self.settings = settings
        self.secret = secret
        self.lease_s = settings.gateway_lease_s
        self.leases: dict[str, Lease] = {}
        self._pulls: dict[int, _Pull] = {}
        self._side: list[asyncio.Task[None]] = []
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.keepalive: KeepAlive | None = None
        self.outbox: Outbox | None = None
        # Set (and replaced) whenever a job of the namespace became servable or
        # stopped being so: what a waiting claim waits for.
        self._jobs_changed = asyncio.Event()
        # Each job's pipeline and delivery limit, which never change: one query
        # per job per server process, not one per call.
        self._terms: OrderedDict[int, Terms] = OrderedDict()
        # Replies whose lease ended here (lapsed, reported, handed back): an extend
        # of one is not a lease to adopt. The latest SETTLED_KEPT.
        self._settled: OrderedDict[str, None] = OrderedDict()
        # Rate limits' token buckets (Redis), opened on the first limited lease.
        self._buckets: RateBuckets | None = None
        # This process among the namespace's server processes ("taken" notes).
        self.process_id = uuid.uuid4().hex
        # Reported leases this process did not hold, to say taken at `flush`.
        self._taken_by_reports: list[str] = []
        # Pings and notes sent beside a request.
        self._errands: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Connect to NATS; start the keep-alive ticker, the outbox, the lapse watch."""
        nc = self._nc = await connect(self.settings.nats_url, name="jobsys-gateway")
        self._js = jetstream(nc, self.settings)
        self.keepalive = KeepAlive(nc)
        prefix = nc.new_inbox()
        # The gateway holds the results of every remote processor it serves: its
        # backpressure starts at HELD_FACTOR times a processor's.
        held = self.settings.max_held_results * HELD_FACTOR
        self.outbox = Outbox(
            self.settings.model_copy(update={"max_held_results": held}),
            self.keepalive,
            self.settings.result_batch_size,
            lambda serial: f"{prefix}.{serial}",
        )  # fmt: skip
        await nc.subscribe(f"{prefix}.*", cb=self._on_confirm)
        # A job becomes servable when bootstrap made its consumer, and stops when
        # its stream is deleted: waiting claims hear of both at once.
        await nc.subscribe(job_notices(self.settings.namespace), cb=self._on_jobs_changed)
        await nc.subscribe(again_subject(f"{prefix}.*"), cb=self._on_again)
        await nc.subscribe(leases_taken_subject(self.settings.namespace), cb=self._on_taken)
        for name, coro in (
            ("keep-alive", self.keepalive.run()),
            ("outbox", self.outbox.run()),
            ("lease lapses", self._lapse_loop()),
        ):
            task = asyncio.create_task(coro, name=f"gateway {name}")
            task.add_done_callback(self._side_ended)
            self._side.append(task)

    def _side_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway side task died", exc_info=task.exception(),
                      extra={"task": task.get_name()})  # fmt: skip

    async def close(self) -> None:
        """Give unsent results a last try, disconnect. Leases are not handed back: their
        processors are still running them, and will extend them with the next server
        process (which adopts them) or report them; otherwise NATS delivers them
        again after ack_wait."""
        for task in self._side:
            task.cancel()
        await asyncio.gather(*self._side, return_exceptions=True)
        if self._buckets is not None:
            with contextlib.suppress(Exception):
                await self._buckets.close()
        if self._nc is None:
            return
        with contextlib.suppress(Exception):
            if self.outbox is not None:
                await self.outbox.close()
            await self._nc.flush(timeout=5)
        with contextlib.suppress(Exception):
            await self._nc.close()

    @property
    def ready(self) -> bool:
        """Whether the gateway is connected (started)."""
        return self._nc is not None and self.outbox is not None

    @property
    def js(self) -> JetStreamContext:
        """The gateway's JetStream context (started)."""
        assert self._js is not None
        return self._js

    @property
    def full(self) -> bool:
        """Results not yet recorded fill the outbox: lease nothing more (backpressure)."""
        return self.outbox is not None and self.outbox.full

    # -- which jobs ------------------------------------------------------------

    async def _on_jobs_changed(self, msg: Msg) -> None:
        if parse_job_notice(self.settings.namespace, msg.subject) is None:
            return
        changed, self._jobs_changed = self._jobs_changed, asyncio.Event()
        changed.set()

    async def terms(self, job_id: int) -> Terms:
        """The job's serving terms (cached; `status` is as first read); raises JobNotFound."""
        terms = self._terms.get(job_id)
        if terms is None:
            terms = await anyio.to_thread.run_sync(job_terms, job_id)
            self._terms[job_id] = terms
            if len(self._terms) > TERMS_CACHED:
                self._terms.popitem(last=False)
        return terms

    def changes(self) -> asyncio.Event:
        """Set when a job of the namespace next becomes servable or stops being so
        (take it before looking, wait on it after)."""
        return self._jobs_changed

    # -- leasing ---------------------------------------------------------------

    async def rate_allows(self, terms: Terms, n: int) -> tuple[int, float]:
        """How many of `n` tasks the job's rate limits allow leasing now (all of them
        when it has none), and when none, the seconds until one could be."""
        limits: list[Bucket] = []
        if terms.rate_per_s is not None:
            limits.append(bucket(self.settings, "job", str(terms.job_id), terms.rate_per_s))
        pipeline_rate = self.settings.pipeline_rates.get(terms.pipeline)
        if pipeline_rate is not None:
            limits.append(bucket(self.settings, "pipeline", terms.pipeline, pipeline_rate))
        if not limits:
            return n, 0.0
        if self._buckets is None:
            self._buckets = RateBuckets(self.settings)
        try:
            return await self._buckets.take(limits, n)
        except Exception as exc:
            raise ServiceUnavailable(f"Redis did not answer for the rate limit: {exc!r}") from None

    async def lease(self, job_id: int, n: int, wait_s: float, holder: str) -> list[Leased] | None:
        """Up to `n` of the job's task messages, leased to `holder` (waiting up to
        `wait_s` for the first); None when the job's stream or consumer is gone."""
        assert self._js is not None and self.keepalive is not None
        pull = self._pulls.get(job_id)
        names = JobNames.of(self.settings.namespace, job_id)
        if pull is None:
            try:
                await self._js.consumer_info(names.stream, names.consumer)
                sub = await self._js.pull_subscribe_bind(
                    durable=names.consumer, stream=names.stream
                )
            except NotFoundError:
                return None
            except Exception as exc:
                raise ServiceUnavailable(f"NATS did not answer: {exc!r}") from None
            pull = self._pulls[job_id] = _Pull(sub, asyncio.Lock(), time.monotonic())
        async with pull.lock:
            pull.used = time.monotonic()
            try:
                msgs = await pull.sub.fetch(n, timeout=max(wait_s, 0.05))
            except TimeoutError:
                return []
            except NotFoundError:
                await self._forget_pull(job_id)
                return None
            except Exception as exc:
                await self._forget_pull(job_id)
                raise ServiceUnavailable(f"NATS did not hand out tasks: {exc!r}") from None
        now = time.monotonic()
        out: list[Leased] = []
        for msg in msgs:
            leased = self._hold(job_id, msg, names, now, holder)
            if leased is not None:
                out.append(leased)
        return out

    def _hold(
        self, job_id: int, msg: Msg, names: JobNames, now: float, holder: str
    ) -> Leased | None:
        assert self.keepalive is not None and self._nc is not None
        ids = parse_msg_id((msg.headers or {}).get("Nats-Msg-Id"))
        if ids is None or ids[0] != job_id:
            # Not a task message of this job: nothing can ever process it.
            log.warning("foreign message terminated", extra={"job_id": job_id})
            asyncio.get_running_loop().create_task(msg.term())
            return None
        self.keepalive.hold(msg.reply, self.settings.ack_wait_s)
        self.leases[msg.reply] = Lease(job_id, ids[1], now + self.lease_s, holder)
        deliveries = max(msg.metadata.num_delivered or 1, 1)
        handle = make_handle(self.secret, Handle(job_id, ids[1], msg.reply))
        return Leased(handle, ids[1], deliveries, msg.data)

    async def _forget_pull(self, job_id: int) -> None:
        pull = self._pulls.pop(job_id, None)
        if pull is not None:
            with contextlib.suppress(Exception):
                await pull.sub.unsubscribe()

    def extend(self, handles: list[Handle], holder: str) -> tuple[int, int]:
        """Restart the leases of `handles` (held by `holder`): (extended, unknown).

        A handle this process holds no lease of, and never settled (its lease
        lapsed, or it was reported or handed back here), was granted by a server
        process before this one (a restart): it is adopted, held in progress
        from now on, so its task is not delivered again while it runs."""
        assert self.keepalive is not None
        deadline = time.monotonic() + self.lease_s
        extended = unknown = 0
        adopted: list[str] = []
        for h in handles:
            lease = self.leases.get(h.reply)
            if lease is None and h.reply not in self._settled:
                lease = self.leases[h.reply] = Lease(h.job_id, h.task_no, deadline, holder)
                self.keepalive.hold(h.reply, self.settings.ack_wait_s)
                adopted.append(h.reply)
            if lease is None or lease.holder != holder:
                unknown += 1
                continue
            lease.deadline = deadline
            extended += 1
        if adopted:
            # In progress now, not at the ticker's next round: the old process's
            # last ping may be most of an ack_wait ago.
            self._background(self._adopted(adopted))
        return extended, unknown

    async def _adopted(self, replies: list[str]) -> None:
        await self._ping(replies)
        await self._say_taken(replies)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` beside the request (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._errands.add(task)
        task.add_done_callback(self._errands.discard)

    async def _say_taken(self, replies: list[str]) -> None:
        """Tell the namespace's other server processes this one holds `replies` now."""
        assert self._nc is not None
        note = json.dumps({"by": self.process_id, "replies": replies}).encode()
        try:
            await self._nc.publish(leases_taken_subject(self.settings.namespace), note)
        except Exception as exc:
            # Not told: a process still holding one hands it back when its copy
            # lapses, and NATS delivers the task again (still counted once).
            log.warning("could not say leases were taken", extra={"error": repr(exc)})

    async def _on_taken(self, msg: Msg) -> None:
        # Another process took these leases over: let go of them here, without
        # handing them back (its keep-alive holds them now). Not settled: an
        # extend reaching this process later adopts them again.
        try:
            note = json.loads(msg.data)
            by, replies = note["by"], note["replies"]
        except (ValueError, KeyError, TypeError):
            log.debug("ignored a malformed leases-taken note")
            return
        if by == self.process_id or not isinstance(replies, list):
            return
        assert self.keepalive is not None
        let_go = 0
        for reply in replies:
            if isinstance(reply, str) and self.leases.pop(reply, None) is not None:
                self.keepalive.release(reply)
                let_go += 1
        if let_go:
            log.info("leases taken over by another server process", extra={"count": let_go})

    async def _ping(self, replies: list[str]) -> None:
        assert self._nc is not None
        with contextlib.suppress(Exception):
            for reply in replies:
                await self._nc.publish(reply, b"+WPI")
            await self._nc.flush(timeout=5)

    def _settle(self, reply: str) -> None:
        """`reply`'s lease is over here for good (lapsed, reported, handed back)."""
        self.leases.pop(reply, None)
        self._settled[reply] = None
        if len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)

    async def _lapse_loop(self) -> None:
        while True:
            await asyncio.sleep(LAPSE_TICK_S)
            now = time.monotonic()
            lapsed = [reply for reply, lease in self.leases.items() if lease.deadline <= now]
            if lapsed:
                await self._hand_back(lapsed, b"-NAK")
                log.info("leases lapsed: tasks handed back", extra={"count": len(lapsed)})
            for job_id, pull in list(self._pulls.items()):
                if now - pull.used > IDLE_PULL_S and not pull.lock.locked():
                    await self._forget_pull(job_id)

    async def _hand_back(self, replies: list[str], verb: bytes) -> None:
        assert self._nc is not None and self.keepalive is not None
        for reply in replies:
            self._settle(reply)
            self.keepalive.release(reply)
        try:
            for reply in replies:
                await self._nc.publish(reply, verb)
            await self._nc.flush(timeout=5)
        except Exception as exc:
            # Not handed back now: NATS delivers them again after ack_wait.
            log.warning("could not hand tasks back", extra={"error": repr(exc)})

    # -- reports -----------------------------------------------------------------

    def record(self, job_id: int, h: Handle, result: TaskResult) -> None:
        """An outcome to count: into the outbox; its message held until recorded."""
        assert self.keepalive is not None and self.outbox is not None
        if h.reply not in self.leases:
            # Granted or adopted by another process: it must not hand it back
            # (told when the report is over, in one note).
            self._taken_by_reports.append(h.reply)
        self._settle(h.reply)
        # A lease that lapsed, or was granted by another server process, is
        # held from now on too: the result must not be delivered again.
        self.keepalive.hold(h.reply, self.settings.ack_wait_s)
        self.keepalive.until(h.reply, NO_DEADLINE)
        self.outbox.add(job_id, result)

    def flush(self, job_id: int) -> None:
        """A report is over: its results go out now (it was batched by the processor)."""
        assert self.outbox is not None
        self.outbox.flush(job_id)
        if self._taken_by_reports:
            taken, self._taken_by_reports = self._taken_by_reports, []
            self._background(self._say_taken(taken))

    async def retry(self, handles: list[Handle], delay_s: float) -> int:
        """Hand back the messages of `handles` this process holds (transient failures
        or tasks not run); how many. One not held here is left alone: its lease
        lapsed and it may be another's delivery by now."""
        held = [h.reply for h in handles if h.reply in self.leases]
        if held:
            verb = b"-NAK"
            if delay_s > 0:
                verb += b" " + json.dumps({"delay": int(delay_s * 1e9)}).encode()
            await self._hand_back(held, verb)
        return len(held)

    def stats(self) -> dict[str, Any]:
        """What the gateway holds now (for logs and tests)."""
        return {
            "leases": len(self.leases),
            "results_held": self.outbox.results if self.outbox is not None else 0,
        }

    async def _on_confirm(self, msg: Msg) -> None:
        # <prefix>.<serial>: a worker recorded the batch and acked its messages.
        assert self.outbox is not None
        with contextlib.suppress(ValueError):
            self.outbox.confirm(int(msg.subject.rsplit(".", 1)[1]))

    async def _on_again(self, msg: Msg) -> None:
        # <prefix>.<serial>.again: a worker could not record it (yet).
        assert self.outbox is not None
        serial = serial_of_again(msg.subject)
        if serial is not None:
            self.outbox.again(serial)
