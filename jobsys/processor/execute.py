"""Execution: tasks queued per job, handed out in calls to slots, and what a failure costs.

A *slot* runs one call at a time: an isolated child process
(jobsys.processor.children, the default) or a thread
(jobsys.processor.threads). A *call* is a group of tasks of one job: for a
plain pipeline a chunk run one after the other (one IPC for the chunk, an
outcome streamed back per task), for a batch pipeline one call of the
function. Which job's call a free slot runs is decided by the jobs' shares
(jobsys.processor.shares): highest priority first, then in proportion to
weight, so a new job's tasks start next to an old job's backlog, not behind it.

What a failure costs (the retry policy):

- a task's own exception: one its pipeline gives up on fails it
  (`PipelineSpec.gives_up`, decided in the slot where it was raised); any
  other is transient (delivered again by NATS until max_deliver, then
  failed, saying so);
- the slot died (signal, os._exit, segfault, OOM) or ran past the job's
  time limit (it is killed and replaced): the task it was running is charged
  a transient failure that names the death; the tasks queued behind it in
  the same chunk never ran and are re-run at once here, without going back
  to NATS (no delivery charged);
- a batch call that raised as a whole or died: split in halves, each re-run
  here as its own call, until the item(s) that fail alone are found; only
  those are charged.

Chunks are sized from how long the job's tasks take (about CHUNK_TARGET_S of
work each), so a slow pipeline gets one task per call and a fast one many.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nats.aio.msg import Msg

from jobsys.pipelines.registry import PipelineSpec
from jobsys.processor.calls import DONE, END, FAILED, RAISED, RETRY, Failure
from jobsys.processor.shares import Shares

if TYPE_CHECKING:
    from jobsys.processor.rates import Gate, Rates

# Outcomes of tasks that did not run, besides calls.DONE / FAILED / RETRY:
DROPPED = "dropped"  # their job is no longer served (stream deleted): forget them
HANDBACK = "handback"  # the processor is stopping: hand them back to NATS now

log = logging.getLogger(__name__)

# A chunk of a plain pipeline holds about this much work (by the job's
# measured task time): long enough to make one IPC per chunk cheap, short
# enough that a cancelled job's queued tasks stop starting soon.
CHUNK_TARGET_S = 0.02
CHUNK_MAX = 128
# A job's tasks fetched ahead of execution: enough to keep every slot busy
# for about this long, at least one per slot, at most FETCH_MAX.
AHEAD_TARGET_S = 0.1
FETCH_MAX = 500
# Task time of a job not measured yet (its first chunks are small).
FIRST_GUESS_S = 0.05
EWMA_WEIGHT = 0.2
WATCHDOG_TICK_S = 0.1
# How the reason of a task stopped at its time limit begins (metrics tell it apart).
TIMED_OUT = "timed out after"


@dataclass(eq=False)
class JobRun:
    """What execution knows of a job it serves."""

    job_id: int
    # The pipeline as the job names it (a registered name or module:function).
    pipeline: str
    spec: PipelineSpec
    timeout_s: float
    max_deliver: int
    # (base, max) seconds between deliveries of a transient failure: the
    # job's, else its pipeline's; None: the processor's settings.
    retry_delay: tuple[float, float] | None = None
    # Its rate limit here (jobsys.processor.rates), if it has one: a task
    # starts only with one of its tokens.
    gate: Gate | None = None
    active: bool = True
    # Seconds per task, smoothed; None until the first outcome.
    task_s: float | None = None
    # Its share of slots (from the stream's description; `Execution.share`).
    priority: int = 0
    weight: int = 1

    def measured(self, seconds: float) -> None:
        """Fold one task's run time into the estimate."""
        if self.task_s is None:
            self.task_s = seconds
        else:
            self.task_s += EWMA_WEIGHT * (seconds - self.task_s)


@dataclass(slots=True, eq=False)
class Task:
    """One delivered task message."""

    run: JobRun
    task_no: int
    msg: Msg
    deliveries: int
    settled: bool = False
    # When its pipeline call started here (monotonic; 0 until then).
    started: float = 0.0


@dataclass(eq=False)
class Call:
    """Tasks of one job a slot runs in one go (see the module docstring)."""

    run: JobRun
    tasks: list[Task]
    # Outcomes already reported, by index in `tasks`.
    answered: set[int] = field(default_factory=set)
    serial: int = 0


class Slot(Protocol):
    """Where calls run: a child process or a thread."""

    call: Call | None
    ready: bool
    # When the running task (or batch call) must end; inf when idle.
    deadline: float

    async def start(self) -> None:
        """Make the slot ready (it calls `Execution.wake` when it is)."""

    def run(self, call: Call) -> None:
        """Start `call` (the slot is ready and idle)."""

    def kill(self, reason: str) -> None:
        """Stop the running call for good; the slot reports it died with `reason`."""

    async def close(self, grace_s: float) -> None:
        """Let a running call finish within `grace_s`, then stop the slot."""


class SlotBase:
    """What both kinds of slot share: starting a call and taking its outcomes.

    A call's tasks run one after another (a batch call: all at once); each
    task gets its own time limit from when it starts. Outcomes arrive as
    frames ``(serial, index, kind, value)``: a task's outcome, RAISED for a
    batch call that raised as a whole, END when the call is over.
    """

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.call: Call | None = None
        self.ready = False
        self.deadline = float("inf")
        self._task_started = 0.0

    def _begin(self, call: Call) -> None:
        """`call` starts now: its first task (or the whole batch) is timed from here."""
        self.call = call
        now = time.monotonic()
        self._task_started = now
        self.deadline = now + call.run.timeout_s
        for task in call.tasks if call.run.spec.is_batch else call.tasks[:1]:
            self.execution.started(task, self.deadline)

    def on_frame(self, serial: int, index: int, kind: str, value: Any, size: int) -> None:
        """One frame of the running call (frames of an earlier call are ignored);
        `size` is a DONE result's length as JSON (jobsys.processor.calls)."""
        call = self.call
        if call is None or serial != call.serial:
            return
        now = time.monotonic()
        if index == END:
            self.call = None
            self.deadline = float("inf")
            self.execution.wake()
        elif index == RAISED:
            permanent, reason = value
            self.execution.raised(call, permanent, reason)
        else:
            batch = call.run.spec.is_batch
            seconds = (now - self._task_started) / (len(call.tasks) if batch else 1)
            if not batch:
                # The next task of the chunk starts now: its own time limit.
                self._task_started = now
                self.deadline = now + call.run.timeout_s
                if index + 1 < len(call.tasks):
                    self.execution.started(call.tasks[index + 1], self.deadline)
            self.execution.outcome(call, index, kind, value, size, seconds)


# settle(task, kind, value, size): the processor's handling of a task's final
# outcome here (DONE with the result and its length as JSON, FAILED or RETRY
# with the reason).
Settle = Callable[[Task, str, Any, int], None]


@dataclass
class _JobQueue:
    run: JobRun
    tasks: deque[Task] = field(default_factory=deque)
    # Groups that must run as calls of their own (halves of a split batch).
    pinned: deque[list[Task]] = field(default_factory=deque)
    since: float = 0.0
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def queued(self) -> int:
        return len(self.tasks) + sum(len(g) for g in self.pinned)


class Execution:
    """Queues tasks per job and hands calls to slots; applies the retry policy."""

    def __init__(
        self,
        settle: Settle,
        max_result_bytes: int,
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
        started: Callable[[Task, float], None],
    ) -> None:
        self.settle = settle
        # started(task, deadline): the task is running now and must end by then.
        self.started = started
        # Starts a short-lived task whose failure is logged loudly (the processor's).
        self.spawn = spawn
        self.max_result_bytes = max_result_bytes
        self.slots: list[Slot] = []
        # The rate limits of the jobs served (set by the processor; None: none).
        self.rates: Rates | None = None
        self._queues: OrderedDict[int, _JobQueue] = OrderedDict()
        # The queues that were given work since they were last seen empty: a
        # dispatch looks at these, not at every job served (hundreds of small
        # jobs served at once, most with nothing queued here, made a pass over
        # all queues per dispatch ~11 % of the processor's CPU).
        self._maybe_work: dict[int, _JobQueue] = {}
        self.shares = Shares()
        self._wake = asyncio.Event()
        self._stopping = False
        self._serial = 0
        self.deaths = 0
        self.splits = 0

    # -- what feeds see ------------------------------------------------------

    def ahead(self, run: JobRun) -> int:
        """How many of this job's tasks to keep fetched ahead of execution."""
        n_slots = max(len(self.slots), 1)
        per_task = run.task_s if run.task_s is not None else FIRST_GUESS_S
        want = math.ceil(n_slots * AHEAD_TARGET_S / max(per_task, 1e-6))
        want = max(want, n_slots, 2 * (run.spec.batch_size or 0))
        want = min(want, max(FETCH_MAX, 2 * (run.spec.batch_size or 0)))
        # A rate-limited job: no more than a moment of its rate (others may start them).
        return min(want, run.gate.ahead_cap()) if run.gate is not None else want

    def queued(self, job_id: int) -> int:
        """Tasks of the job waiting for a slot."""
        q = self._queues.get(job_id)
        return q.queued() if q is not None else 0

    async def wait_for_room(self, run: JobRun) -> None:
        """Until fewer than half of `ahead(run)` of the job's tasks wait here."""
        q = self._queue(run)
        while q.queued() * 2 >= self.ahead(run) and run.active:
            q.room.clear()
            await q.room.wait()

    def submit_one(self, task: Task) -> None:
        """Queue one delivered task."""
        if self._stopping:
            self._settle(task, HANDBACK, None)
            return
        q = self._queues.get(task.run.job_id) or self._queue(task.run)
        if not q.tasks and not q.pinned:
            q.since = time.monotonic()
        q.tasks.append(task)
        self._maybe_work[task.run.job_id] = q
        if task.run.gate is not None:
            task.run.gate.wanted.set()
        self._wake.set()

    def share(self, run: JobRun, priority: int, weight: int) -> None:
        """The job's priority and weight (when it is first served, and when they change)."""
        run.priority, run.weight = priority, weight
        self.shares.set(run.job_id, priority, weight)

    def forget(self, job_id: int) -> None:
        """Stop serving a job: its queued tasks will not start (settled DROPPED)."""
        if self.rates is not None:
            self.rates.drop(job_id)
        self.shares.forget(job_id)
        q = self._queues.pop(job_id, None)
        if q is None:
            return
        q.run.active = False
        q.room.set()
        for task in self._empty(q):
            self._settle(task, DROPPED, None)

    def drain(self) -> None:
        """Stop starting anything (shutdown): queued tasks are settled HANDBACK."""
        self._stopping = True
        for q in list(self._queues.values()):
            q.room.set()
            for task in self._empty(q):
                self._settle(task, HANDBACK, None)

    @staticmethod
    def _empty(q: _JobQueue) -> list[Task]:
        left = list(q.tasks) + [t for g in q.pinned for t in g]
        q.tasks.clear()
        q.pinned.clear()
        return left

    def _requeue(self, run: JobRun, tasks: list[Task], pinned: bool) -> None:
        """Tasks that must run again here, first (innocents, halves of a split)."""
        if self._stopping or not run.active:
            for task in tasks:
                self._settle(task, HANDBACK if self._stopping else DROPPED, None)
            return
        q = self._queue(run)
        if pinned:
            q.pinned.appendleft(tasks)
        else:
            q.tasks.extendleft(reversed(tasks))
        self._maybe_work[run.job_id] = q
        self._wake.set()

    def replace_slot(self, old: Slot, new: Slot) -> None:
        """Put `new` where `old` was (an abandoned thread) and start it."""
        self.slots[self.slots.index(old)] = new
        self.spawn(new.start(), "start a pipeline slot")

    @property
    def stopping(self) -> bool:
        """Whether the processor is shutting down (nothing new starts)."""
        return self._stopping

    def _queue(self, run: JobRun) -> _JobQueue:
        q = self._queues.get(run.job_id)
        if q is None:
            q = self._queues[run.job_id] = _JobQueue(run)
            self.shares.set(run.job_id, run.priority, run.weight)
        return q

    # -- handing out calls -----------------------------------------------------

    async def dispatch_loop(self) -> None:
        """Hand queued work to idle slots whenever either appears (a side task)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = self._dispatch()
            if delay is not None:
                # A batch is filling: look again when its wait is over.
                asyncio.get_running_loop().call_later(delay, self._wake.set)

    def wake(self) -> None:
        """Something changed (a slot became idle or ready)."""
        self._wake.set()

    def _dispatch(self) -> float | None:
        if self._stopping:
            return None
        idle = [s for s in self.slots if s.ready and s.call is None]
        retry_in: float | None = None
        now = time.monotonic()
        while idle:
            # Each free slot goes to the first job in the shares' order that has
            # a call to run now (a batch still filling is passed over).
            with_work = self._with_work()
            progressed = False
            for job_id in self.shares.order(with_work):
                q = self._queues[job_id]
                tasks, wait = self._take(q, now, len(idle))
                if wait is not None:
                    retry_in = wait if retry_in is None else min(retry_in, wait)
                if not tasks:
                    continue
                per_task = q.run.task_s if q.run.task_s is not None else FIRST_GUESS_S
                # Slot-seconds expected (a batch's task time is per item too).
                self.shares.charge(job_id, per_task * len(tasks))
                if q.queued() * 2 < self.ahead(q.run):
                    q.room.set()
                self._serial += 1
                idle.pop().run(Call(q.run, tasks, serial=self._serial))
                progressed = True
                break
            if not progressed:
                break
        return retry_in

    def _with_work(self) -> list[int]:
        """The jobs with tasks queued here (forgotten and emptied queues are let go)."""
        maybe = self._maybe_work
        for job_id in [
            j for j, q in maybe.items() if not (q.tasks or q.pinned) or self._queues.get(j) is not q
        ]:
            del maybe[job_id]
        return list(maybe)

    def _take(self, q: _JobQueue, now: float, idle: int) -> tuple[list[Task], float | None]:
        if q.pinned:
            return q.pinned.popleft(), None
        if not q.tasks:
            return [], None
        spec = q.run.spec
        if spec.batch_size is not None:
            waited = now - q.since
            if len(q.tasks) < spec.batch_size and waited < spec.batch_wait_s and q.run.active:
                return [], spec.batch_wait_s - waited
            n = min(spec.batch_size, len(q.tasks))
        else:
            per_task = q.run.task_s if q.run.task_s is not None else FIRST_GUESS_S
            n = min(
                max(1, int(CHUNK_TARGET_S / max(per_task, 1e-6))),
                CHUNK_MAX,
                math.ceil(len(q.tasks) / idle),
            )
        gate = q.run.gate
        if gate is not None:
            # Its tasks wait here (fetched, kept in progress) for tokens: the
            # slot goes to another job meanwhile; the gate wakes dispatch.
            n = gate.spend(n)
            if n == 0:
                return [], None
            # When each limited start was allowed (tests and drills read it).
            log.debug(
                "rate-limited tasks start",
                extra={"job_id": q.run.job_id, "tasks": n, "at": f"{time.time():.6f}"},
            )
        tasks = [q.tasks.popleft() for _ in range(n)]
        q.since = now
        return tasks, None

    # -- what slots report -------------------------------------------------------

    def outcome(
        self, call: Call, index: int, kind: str, value: Any, size: int, seconds: float
    ) -> None:
        """One task of `call` ended (`seconds` is its share of the run time, `size`
        a DONE result's length as JSON)."""
        if index in call.answered or index >= len(call.tasks):
            return
        call.answered.add(index)
        call.run.measured(seconds)
        self._settle(call.tasks[index], kind, value, size)

    def raised(self, call: Call, permanent: bool, reason: str) -> None:
        """A batch call raised as a whole: split it, or charge its one item."""
        left = [t for i, t in enumerate(call.tasks) if i not in call.answered]
        call.answered.update(range(len(call.tasks)))
        if len(left) == 1:
            self._settle(left[0], FAILED if permanent else RETRY, reason)
        elif left:
            self._split(call.run, left, f"raised: {reason}")

    def died(self, call: Call, reason: str) -> None:
        """The slot running `call` died or was killed (`reason` names how)."""
        self.deaths += 1
        left = [(i, t) for i, t in enumerate(call.tasks) if i not in call.answered]
        call.answered.update(range(len(call.tasks)))
        if not left:
            return
        culprit = left[0][1]
        log.warning(
            "execution died; the task it was running is charged",
            extra={
                "job_id": call.run.job_id,
                "task": culprit.task_no if not call.run.spec.is_batch or len(left) == 1 else None,
                "tasks": len(left),
                "reason": reason,
            },
        )
        if call.run.spec.is_batch and len(left) > 1:
            self._split(call.run, [t for _, t in left], reason)
            return
        self._settle(culprit, RETRY, reason)
        innocents = [t for _, t in left[1:]]
        if innocents:
            # They never started: run them again here, first, at no charge.
            self._requeue(call.run, innocents, pinned=False)

    def _split(self, run: JobRun, tasks: list[Task], reason: str) -> None:
        self.splits += 1
        half = len(tasks) // 2
        log.info(
            "batch split to find what failed",
            extra={"job_id": run.job_id, "tasks": len(tasks), "reason": reason},
        )
        self._requeue(run, tasks[half:], pinned=True)
        self._requeue(run, tasks[:half], pinned=True)

    def _settle(self, task: Task, kind: str, value: Any, size: int = 0) -> None:
        if task.settled:
            return
        task.settled = True
        try:
            self.settle(task, kind, value, size)
        except Exception:
            log.exception("settling a task failed", extra={"job_id": task.run.job_id})

    # -- time limits -------------------------------------------------------------

    async def watchdog_loop(self) -> None:
        """Kill what runs past its job's time limit (a side task)."""
        while True:
            await asyncio.sleep(WATCHDOG_TICK_S)
            now = time.monotonic()
            for slot in list(self.slots):
                call = slot.call
                if call is not None and now > slot.deadline:
                    slot.kill(f"{TIMED_OUT} {call.run.timeout_s:g} s")


def retry_decision(task: Task, kind: str, reason: str | Failure) -> tuple[str, str | Failure]:
    """(what to do, why): "fail" (count it failed) or "retry" (nak: NATS redelivers).

    A transient failure on the task's last delivery fails it, saying how
    many deliveries it had and what the last one died of (an exception's
    type and traceback are kept).
    """
    if kind == FAILED:
        return "fail", reason
    if kind == RETRY and task.deliveries >= task.run.max_deliver:
        told = f"gave up after {task.deliveries} deliveries: {reason}"
        return "fail", reason.retold(told) if isinstance(reason, Failure) else told
    return "retry", reason


__all__ = [
    "DONE",
    "DROPPED",
    "FAILED",
    "HANDBACK",
    "RETRY",
    "TIMED_OUT",
    "Call",
    "Execution",
    "JobRun",
    "Slot",
    "SlotBase",
    "Task",
    "retry_decision",
]
