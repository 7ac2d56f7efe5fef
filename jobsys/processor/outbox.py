"""The result outbox: batch, send, hold until recorded, re-send, backpressure.

Outcomes of one job are gathered into batches (up to the batch size or
JOBSYS_RESULT_BATCH_BYTES of results, or
whatever is there after JOBSYS_RESULT_FLUSH_MS, or at once when none of the
job's tasks is left here to wait for and its stream had none left to
deliver) and sent to the
`process_results` actor with this processor's confirmation subject. The
processor never acks a task itself: the worker acks after it committed the
batch, then confirms on that subject.

A batch is *held* until confirmed, for as long as the processor lives: its
messages are kept in progress in NATS (jobsys.processor.keepalive), so a
task whose pipeline succeeded is never delivered again -- nor exhausted and
declared lost -- because recording it is slow or stalled (workers stopped,
Postgres down, a backlog). There is no timer that lets a batch go. A batch
not confirmed after JOBSYS_RESULT_RESEND_S is sent again (Redis may have
lost it; a duplicate is recorded as nothing), then after twice as long, and
so on up to JOBSYS_RESULT_RESEND_MAX_S between sends; a batch that cannot
be sent at all (Redis down, or refusing writes at its memory limit) is
retried every few seconds. A worker that could not record a batch says so
(`again`): the batch is then sent again within JOBSYS_RESULT_RESEND_S,
whatever its doubling had reached -- the worker's own retry is a copy Redis
may have refused, and then this processor holds the only one. So once Redis
accepts writes again, every batch is back in it within JOBSYS_RESULT_RESEND_S.

Backpressure: while this processor holds JOBSYS_MAX_HELD_RESULTS results and
its recorder is behind (a batch unconfirmed for RECORDER_BEHIND_S), its feeds
fetch nothing more, so unfetched tasks wait in NATS, uncharged. A recorder
that keeps up may let the hold grow to KEEPING_UP_FACTOR times that: a fast
pipeline holds its throughput times a batch's round trip (~3,500 results at
17,000 tasks/s), and a flat 2,000 throttled one big job to ~0.77x bare NATS.
The hold a recorder outage builds up -- what a processor dying during it
runs again -- is what was held when it began plus RECORDER_BEHIND_S of
throughput: still JOBSYS_MAX_HELD_RESULTS below ~1,800 tasks/s per processor.

A batch of a job no longer served (its stream was deleted: finished or
cancelled) is sent once more and let go: the worker records it as late.

Items are held as the dicts that go on the wire (`TaskResult`'s fields, those
left at None left out). The processor builds them itself from what it
checked where it came in (jobsys.processor.processor.result_item): a model
per task, built and dumped again, was ~10 % of its CPU (issue 26). The
worker validates every item as a `TaskResult` when it reads the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jobsys import metrics
from jobsys.dramatiq.messages import send_results
from jobsys.models import TaskResult
from jobsys.processor.keepalive import KeepAlive
from jobsys.settings import Settings

log = logging.getLogger(__name__)

# A batch that could not be sent (Redis down) is tried again after this
# long, doubling up to SEND_RETRY_MAX_S.
SEND_RETRY_S = 0.2
SEND_RETRY_MAX_S = 5.0
# Backpressure (see the module docstring): a batch unconfirmed this long
# means the recorder is behind; one that keeps up lets the hold reach this
# many times JOBSYS_MAX_HELD_RESULTS.
RECORDER_BEHIND_S = 1.0
KEEPING_UP_FACTOR = 2.5
# What a result item costs on the wire besides its result or error texts (its
# keys, task number, delivery count and reply subject), in bytes, when
# batches are sealed by size.
ITEM_WIRE_BYTES = 200
# The texts of a failure item: the native processor's and the remote's names.
FAILURE_TEXTS = ("error", "error_trace", "traceback")

# One result as it goes on the wire (see the module docstring).
Item = dict[str, Any]
# Called with the job id just before one of its batches is sealed.
OnSeal = Callable[[int], None]


def wire_item(result: TaskResult) -> Item:
    """A validated result as it goes on the wire: its fields, those left at None left
    out (every reader's model defaults them to None). A batch without `null` is one
    orjson may encode and sign (jobsys.jsontext), and a smaller message besides."""
    return result.model_dump(exclude_none=True)


def failure_size(item: Item) -> int:
    """The length of a failure item's texts (its error and traceback), for sealing
    batches by bytes; the processor's and the remote processor's items alike."""
    size = 0
    for key in FAILURE_TEXTS:
        text = item.get(key)
        if isinstance(text, str):
            size += len(text)
    return size


@dataclass
class Held:
    """A result batch sent (or to be sent) and not yet confirmed as recorded."""

    job_id: int
    results: list[Item]
    replies: list[str]
    sealed_at: float = 0.0  # monotonic
    next_at: float = 0.0
    sends: int = 0
    failures: int = 0
    orphan: bool = False


@dataclass
class OutboxStats:
    """What the outbox did (logged at exit)."""

    batches_sent: int = 0
    batches_confirmed: int = 0
    batches_resent: int = 0


@dataclass
class _Buffer:
    since: float
    results: list[Item] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    size: int = 0  # bytes of results, about (ITEM_WIRE_BYTES each besides their texts)


class Outbox:
    """Result batches of this processor, from outcome to confirmed (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        keepalive: KeepAlive,
        batch_size: int,
        notify_subject: Callable[[int], str],
        on_seal: OnSeal | None = None,
    ) -> None:
        self.settings = settings
        self.keepalive = keepalive
        self.batch_size = batch_size
        self.notify_subject = notify_subject
        self.on_seal = on_seal
        self.stats = OutboxStats()
        self.held: dict[int, Held] = {}
        # Results buffered or held: what backpressure counts.
        self.results = 0
        self._buffers: dict[int, _Buffer] = {}
        self._orphans: set[int] = set()
        self._serial = 0
        self._due = asyncio.Event()
        self._failing = False
        # Sends to Redis run off the event loop, one at a time.
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="jobsys-send")

    @property
    def full(self) -> bool:
        """Whether feeds must stop fetching (backpressure, see the module docstring)."""
        cap = self.settings.max_held_results
        if self.results < cap:
            return False
        if self.results >= cap * KEEPING_UP_FACTOR or not self.held:
            return True
        # Batches are held in the order they were sealed: the first is the oldest.
        oldest = next(iter(self.held.values()))
        return time.monotonic() - oldest.sealed_at >= RECORDER_BEHIND_S

    def add(self, job_id: int, result: TaskResult, last: bool = False) -> None:
        """One task's outcome; its message stays held until the batch is confirmed.
        `last`: nothing else of the job is fetched or running here now, so no
        more is coming to wait for: the batch goes at once (a small job's one
        result does not wait JOBSYS_RESULT_FLUSH_MS)."""
        self.add_item(job_id, wire_item(result), result.reply, last)

    def add_item(
        self, job_id: int, item: Item, reply: str, last: bool = False, size: int = 0
    ) -> None:
        """`add` for an item already in its wire form (`wire_item`), `reply` its
        reply subject: the processor's way, without a model per task. `size`: the
        length of its result or error texts as JSON, when known (a batch is sealed
        once they come to JOBSYS_RESULT_BATCH_BYTES, however few its items)."""
        buf = self._buffers.get(job_id)
        if buf is None:
            buf = self._buffers[job_id] = _Buffer(time.monotonic())
        buf.results.append(item)
        buf.replies.append(reply)
        buf.size += size + ITEM_WIRE_BYTES
        self.results += 1
        if (
            last
            or len(buf.results) >= self.batch_size
            or buf.size >= self.settings.result_batch_bytes
            or job_id in self._orphans
        ):
            self._seal(job_id)

    def flush(self, job_id: int) -> None:
        """Send what is buffered of the job now, without waiting for the flush timer
        (the task gateway: a remote processor's report is a batch already)."""
        self._seal(job_id)

    def _seal(self, job_id: int) -> None:
        buf = self._buffers.get(job_id)
        if buf is None or not buf.results:
            return
        if self.on_seal is not None:
            self.on_seal(job_id)
        del self._buffers[job_id]
        # Set per batch, not per result (each set takes a lock).
        metrics.RESULTS_HELD.set(self.results)
        self._serial += 1
        self.held[self._serial] = Held(
            job_id,
            buf.results,
            buf.replies,
            sealed_at=time.monotonic(),
            orphan=job_id in self._orphans,
        )
        self._due.set()

    def job_gone(self, job_id: int) -> None:
        """The job's stream is gone: send what is left of it once, then let it go."""
        self._orphans.add(job_id)
        for held in self.held.values():
            if held.job_id == job_id:
                held.orphan = True
                if held.sends:
                    held.next_at = 0.0  # let go at the next round
        self._seal(job_id)
        self._due.set()

    def job_served(self, job_id: int) -> None:
        """The job's stream is (again) served: its results are held as usual."""
        self._orphans.discard(job_id)

    def confirm(self, serial: int) -> None:
        """The worker recorded batch `serial` and acked its messages."""
        if self._release(serial):
            self.stats.batches_confirmed += 1
            metrics.RESULT_BATCHES_CONFIRMED.inc()

    def again(self, serial: int) -> None:
        """The worker could not record batch `serial` (a retry may still; Redis may
        have refused that retry): send it again after JOBSYS_RESULT_RESEND_S at the
        latest, unless it is confirmed first. The doubling starts over."""
        held = self.held.get(serial)
        if held is None or not held.sends:
            return  # confirmed already, or not sent yet (it will be)
        soon = time.monotonic() + self.settings.result_resend_s
        if held.next_at > soon:
            held.next_at = soon
            held.sends = 1
        log.info("batch not recorded: sending it again soon",
                 extra={"job_id": held.job_id, "serial": serial, "in_s": held.next_at - soon
                        + self.settings.result_resend_s})  # fmt: skip

    def _release(self, serial: int) -> bool:
        held = self.held.pop(serial, None)
        if held is None:
            return False
        self.results -= len(held.results)
        metrics.RESULTS_HELD.set(self.results)
        self.keepalive.release_all(held.replies)
        return True

    async def run(self) -> None:
        """Seal batches on time, send what is due (a side task of the processor)."""
        period = self.settings.result_flush_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), timeout=period / 2)
            self._due.clear()
            now = time.monotonic()
            for job_id, buf in list(self._buffers.items()):
                if now - buf.since >= period:
                    self._seal(job_id)
            await self.send_due(time.monotonic())

    async def send_due(self, now: float, attempts: int = 1) -> None:
        """Send every held batch whose time has come; stop at the first failure."""
        for serial in [s for s, h in self.held.items() if h.next_at <= now]:
            held = self.held.get(serial)
            if held is None:
                continue
            if held.orphan and held.sends:
                self._release(serial)
                continue
            if not await self._send(serial, held, attempts):
                return  # Redis is down: the rest waits for the next round

    async def _send(self, serial: int, held: Held, attempts: int) -> bool:
        loop = asyncio.get_running_loop()
        for attempt in range(1, attempts + 1):
            try:
                await loop.run_in_executor(
                    self._sender,
                    send_results,
                    held.job_id,
                    held.results,
                    self.notify_subject(serial),
                )
            except Exception as exc:
                held.failures += 1
                held.next_at = time.monotonic() + min(
                    SEND_RETRY_S * 2**held.failures, SEND_RETRY_MAX_S
                )
                # One warning per outage, not one per batch per retry.
                (log.debug if self._failing else log.warning)(
                    "result batches cannot be sent; holding them",
                    extra={"job_id": held.job_id, "held": self.results, "error": repr(exc)},
                )
                self._failing = True
                if attempt < attempts:
                    await asyncio.sleep(min(SEND_RETRY_S * 2**attempt, SEND_RETRY_MAX_S))
                continue
            if self._failing:
                self._failing = False
                log.info("result batches sent again", extra={"held": self.results})
            if held.sends:
                self.stats.batches_resent += 1
                metrics.RESULT_BATCHES_RESENT.inc()
            else:
                metrics.RESULT_BATCHES_SENT.inc()
            held.sends += 1
            held.failures = 0
            held.next_at = time.monotonic() + min(
                self.settings.result_resend_s * 2 ** (held.sends - 1),
                self.settings.result_resend_max_s,
            )
            if held.orphan:
                held.next_at = 0.0
            self.stats.batches_sent += 1
            return True
        return False

    async def close(self) -> None:
        """Shutdown: seal every buffer and give unsent batches a last try (3 attempts).

        Not waiting for confirmations: whatever is not recorded is delivered
        again after ack_wait, once this processor's keep-alive has stopped.
        """
        for job_id in list(self._buffers):
            self._seal(job_id)
        for serial, held in list(self.held.items()):
            if not held.sends:
                await self._send(serial, held, attempts=3)
        self._sender.shutdown(wait=True)
