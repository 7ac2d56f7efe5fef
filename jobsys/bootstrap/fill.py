"""A job's stream made whole: (re)create it and publish every pending task not in it.

One function, `fill_job_stream`, serves everyone who needs a started job's
stream to hold its work: bootstrap (the first time, on resume after a crash,
on a re-run after NATS lost the stream) and the reconciler (`stream_missing`,
`stream_replaced`, `consumer_missing`). Callers hold the job's bootstrap lock
(``job_lock(Lock.BOOTSTRAP, job_id)``): one fill per job at a time.

What the stream holds is known without reading it back:

- The tasks below ``published_count`` were stored in the stream *incarnation*
  recorded in ``jobs.stream_created`` (the stream's NATS creation time).
- If the stream present now is another incarnation (NATS lost it and this
  fill, or anyone, created it again), it holds none of them: every pending
  task below ``published_count`` is published again, and only then is the new
  incarnation recorded, so a fill that dies half-way repeats the
  republishing, it never skips it.
- Tasks from ``published_count`` on are published in task order, and
  ``published_count`` advances after each chunk is stored. When a chunk goes
  in order into a fresh, empty stream (every task pending and contiguous, none
  too large), ``placed_count`` is raised past it *before* it is published:
  its results, which often come back before its PubAcks, are then counted in
  one statement instead of being checked against the stream one request each
  (sql/011_placed_count.sql). Each fill starts by forgetting such guesses.
- Each published task's place in the stream (the sequence its PubAck names;
  for a deduplicated publish, the original message's) is compared with the
  place recorded, ``job_tasks.stream_seq`` (NULL standing for task_no + 1,
  where a first fill into a fresh stream stores it), and written where it
  differs, in the same transaction as the advance: results are counted for
  the task whose message their reply points at (`jobsys.recording`). Before
  republishing into another incarnation, every place is forgotten (0).

Only ``pending`` tasks are ever published: a finished task is never sent again,
however long after the duplicate window a fill resumes. A pending task can
be stored twice only when a fill resumes more than the duplicate window after
one died mid-chunk (at most one chunk); its second result counts nothing.

A task whose message is larger than the server's ``max_payload`` (a server's
limit can shrink after submit) fails with the reason, counted exactly like a
result (`jobsys.recording.counting.record_results`), and the rest goes on.

A cancel always wins: the job must be ``started`` before the stream is made,
after it, and between chunks; a fill that finds it otherwise deletes the
stream it may have made behind teardown's back and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from psycopg.rows import tuple_row

from jobsys.lifecycle.states import Status
from jobsys.nats.admin import delete_job_stream, make_job_stream, parse_server_time, stream_exists
from jobsys.nats.bridge import bridge
from jobsys.nats.notices import notice_job_stream
from jobsys.nats.publish import publish_tasks
from jobsys.nats.subjects import JobNames, msg_id
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.locks import keep_locks
from jobsys.pg.queries import Q
from jobsys.recording.counting import ResultRow, lock_listed_tasks, record_results
from jobsys.settings import Settings, get_settings
from jobsys.storable import storable_error
from jobsys.testing.pauses import Pause, pause

log = logging.getLogger(__name__)

# Tasks read from Postgres and published per round; the job's status is
# re-checked between rounds, so a cancel stops a fill within two chunks (one
# is published while the one before is recorded).
PUBLISH_CHUNK = 5_000
# A job's CREATED notice goes once this many of its first tasks are stored
# (all of them, in a smaller job): a processor's first pull finds that many at
# once, where a pull racing the publishing got a task or two, and it need not
# wait for the whole first chunk (75 ms of a 20,000-task job's start).
ANNOUNCE_AFTER = 500
# One chunk's NATS work (publish and wait for every ack) may take this long.
CHUNK_TIMEOUT_S = 120.0
# Task numbers named in a `tasks_too_large` event (the ledger has them all).
TOO_LARGE_EVENT_TASKS = 20

# A task message's header block as nats-py writes it; the server's
# max_payload applies to header and payload together.
_HEADER_LINE = b"NATS/1.0\r\n"
_MSG_ID_HEADER = b"Nats-Msg-Id: "
_CRLF = b"\r\n"


class FillEnd(StrEnum):
    """How a fill ended."""

    FILLED = "filled"  # the stream holds every pending task of the job
    STOPPED = "stopped"  # the job is not (or no longer) started: nothing more published


@dataclass(frozen=True)
class Fill:
    """What one fill did."""

    end: FillEnd
    recreated: bool = False  # the stream present was not the incarnation recorded
    republished: int = 0  # pending tasks below published_count published again
    published: int = 0  # tasks published from published_count on
    too_large: int = 0  # tasks failed: their message exceeds the server's max_payload
    finalized: Status | None = None  # the status the too-large failures finished it with


@dataclass(frozen=True)
class Incarnation:
    """The job's stream as it is after `ensure_job_stream`."""

    created: datetime | None  # NATS's creation time: which stream this is
    new: bool  # this fill created it (it was missing)
    empty: bool  # no message was ever stored in it (its last sequence is 0)


@dataclass(frozen=True)
class _Chunk:
    """A chunk being published: where the next one starts, and the publishing's
    outcome ((task_no, stream sequence) published, (task_no, size, limit) too large)."""

    end: int
    placed: dict[int, int]  # where each task sits in the stream as recorded
    future: Future[tuple[list[tuple[int, int]], list[tuple[int, int, int]]]]


def placed_at(task_no: int, stream_seq: int | None) -> int:
    """Where a task sits in its job's stream as recorded: `stream_seq`, NULL standing
    for task_no + 1 (where a first fill into a fresh stream stores it; see
    sql/010_result_binding.sql); 0: no message known."""
    return task_no + 1 if stream_seq is None else stream_seq


def _quietly_wait(chunk: _Chunk | None) -> None:
    """Let a chunk's publishing end before the fill returns (its outcome no longer
    matters: the fill stops, and whoever resumes publishes it again)."""
    if chunk is not None:
        try:
            chunk.future.result(CHUNK_TIMEOUT_S)
        except Exception:
            chunk.future.cancel()  # no publishing left running behind us


def task_message_size(job_id: int, task_no: int, payload: bytes) -> int:
    """Bytes of a task message the server checks against its max_payload: the
    header block (with the task's Nats-Msg-Id) and the payload."""
    header = len(_HEADER_LINE) + len(_MSG_ID_HEADER) + len(msg_id(job_id, task_no)) + 2 * len(_CRLF)
    return header + len(payload)


def fill_job_stream(
    job_id: int, settings: Settings | None = None, job: Mapping[str, Any] | None = None
) -> Fill:
    """Make a started job's stream exist and hold every pending task of the job.

    The caller holds ``job_lock(Lock.BOOTSTRAP, job_id)``. `job` is the job's
    ``job_stream_state`` row if the caller read it under that lock (else it
    is read here). Returns what was done; `FillEnd.STOPPED` when the job is
    not started (never started, cancelled, finished), then no stream of it is
    left behind by this call. Raises when NATS fails while the job is still
    started (the caller retries).
    """
    s = settings or get_settings()
    if job is None:
        with connection() as conn:
            job = conn.execute(Q.job_stream_state, {"job_id": job_id}).fetchone()
    if job is None or job["status"] != Status.STARTED:
        return Fill(FillEnd.STOPPED)
    return _Filler(job, s).run()


class _Filler:
    """One fill of one job's stream."""

    def __init__(self, job: Mapping[str, Any], settings: Settings) -> None:
        self.job = job
        self.job_id: int = job["id"]
        self.settings = settings
        self.names = JobNames.of(settings.namespace, self.job_id)
        self.total: int = job["total_count"]
        self.too_large = 0
        self.finalized: Status | None = None
        # The next task number a chunk placed in order must start with; None:
        # this fill does not guess places (see _place_in_order).
        self.next_in_order: int | None = None
        self.max_payload = 0  # the server's max_payload, read when the stream is ensured
        # The CREATED notice's body while it is not sent yet: it goes once the
        # first tasks are stored (see _announce).
        self.notice: bytes | None = None

    def run(self) -> Fill:
        try:
            inc = bridge().run(self._ensure, timeout=CHUNK_TIMEOUT_S)
        except Exception:
            # A cancel's teardown can delete the stream between its creation
            # and the consumer's ("stream not found"): a stop, not an error.
            if self._started():
                raise
            return self._stop("stream creation failed after the job left started")
        recorded: datetime | None = self.job["stream_created"]
        published: int = self.job["published_count"]
        # A stream the published tasks are not in: one this fill just created
        # (it was missing), or another incarnation than the recorded one. (A
        # job with published tasks always has one recorded: it is recorded
        # before the first task is published; sql/012 gave one to jobs
        # published before incarnations were recorded.)
        replaced = inc.created is not None and recorded is not None and inc.created != recorded
        recreated = published > 0 and (inc.new or replaced)
        # Whatever happened meanwhile, the status now decides: a job cancelled
        # while we created its stream must not keep a stream teardown missed.
        # (Where the incarnation is recorded next, with nothing republished
        # first, that guarded write asks it: a small job's first fill.)
        records_next = inc.created is not None and inc.created != recorded and not recreated
        if not records_next and not self._started():
            return self._stop("job left started while its stream was created")
        if self.job["placed_count"] > published:
            self._reset_placed()
        republished = 0
        if recreated:
            self._forget(published)
            republished, went_on = self._publish(0, published, advance=False)
            if not went_on:
                return self._stop("job left started while its tasks were republished")
            log.info("stream re-created, pending tasks republished",
                     extra={"job_id": self.job_id, "republished": republished})  # fmt: skip
        if inc.created is not None and inc.created != recorded and not self._record(inc.created):
            return self._stop("job left started before its stream was recorded")
        # In order into an empty stream: task n lands at sequence n + 1.
        self.next_in_order = 0 if published == 0 and inc.empty and not recreated else None
        fresh, went_on = self._publish(published, self.total, advance=True)
        if not went_on:
            return self._stop("job left started while its tasks were published")
        if self.notice is not None:
            # Nothing was published (every task was finished, or too large):
            # processors are told all the same. (Every chunk has settled, so
            # the bridge's loop is not using `notice` now.)
            bridge().run(lambda nc, js: self._announce(nc))
        return Fill(
            FillEnd.FILLED, recreated=recreated, republished=republished, published=fresh,
            too_large=self.too_large,
        )  # fmt: skip

    async def _ensure(self, nc: NATS, js: JetStreamContext) -> Incarnation:
        # A job's first fill (nothing published, no stream recorded) need not
        # ask whether the stream was there: `new` matters only to tasks
        # published before. The creation's answer says the rest: two of a
        # small job's five NATS requests here.
        first = self.job["published_count"] == 0 and self.job["stream_created"] is None
        existed = not first and await stream_exists(js, self.names)
        info, self.notice = await make_job_stream(nc, js, self.names, self.job, self.settings)
        # The server's limit as known now: placing a chunk in order checks
        # against it (a later change is caught where each chunk is published).
        self.max_payload = int(nc.max_payload)
        return Incarnation(
            created=parse_server_time(info.created), new=not existed, empty=info.state.last_seq == 0
        )

    def _publish(self, from_task: int, below: int, *, advance: bool) -> tuple[int, bool]:
        """Publish the pending tasks in [from_task, below); (published, job still started).

        `advance`: move published_count past each chunk (the resume point);
        otherwise these tasks were already counted as published.

        Chunks overlap: the next one is published (NATS, on the bridge's
        thread) while the previous one's stream sequences and resume point are
        written (Postgres). A chunk still counts as published only once it is
        stored and its sequences are written; a fill that dies repeats at most
        the two chunks in flight, and a cancel stops it within two chunks.
        """
        sent = 0
        cursor = from_task  # where the next chunk starts: the resume point's next value
        read_from = from_task  # where the next read starts (past finished tasks skipped)
        inflight: _Chunk | None = None
        while True:
            # Still at it, under a lock that is still ours (else LockLost:
            # this process was stopped long enough for another fill to start).
            keep_locks()
            pause(Pause.BETWEEN_FILL_CHUNKS, self.job_id)
            rows, read_from = self._read_pending(read_from, below)
            nxt: _Chunk | None = None
            if rows:
                chunk = [(task_no, payload.encode("utf-8")) for task_no, payload, _ in rows]
                if advance and not self._place_in_order(chunk):
                    _quietly_wait(inflight)
                    return sent, False
                nxt = _Chunk(
                    end=chunk[-1][0] + 1,
                    placed={t: placed_at(t, seq) for t, _, seq in rows},
                    future=bridge().submit(
                        lambda nc, js, chunk=chunk, after=inflight: self._publish_chunk(  # type: ignore[misc]
                            nc, js, chunk, after
                        )
                    ),
                )
                cursor = nxt.end
            if inflight is not None:
                try:
                    n, went_on = self._settle(inflight, advance)
                except BaseException:
                    _quietly_wait(nxt)
                    raise
                sent += n
                if not went_on:
                    _quietly_wait(nxt)
                    return sent, False
            if nxt is None:
                if advance and cursor < below:
                    # The tasks left were all finished: nothing to send.
                    return sent, self._advance(below)
                return sent, True
            inflight = nxt

    def _read_pending(
        self, read_from: int, below: int
    ) -> tuple[list[tuple[int, str, int | None]], int]:
        """The next chunk: up to PUBLISH_CHUNK pending tasks from task `read_from`
        on, below `below`, in task order; and where the read after it starts.

        Each statement reads a span of at most PUBLISH_CHUNK task numbers. A
        job's rows are new, so the planner has no statistics for them; over a
        span to the job's end, once the ledger held a few hundred thousand rows,
        it scanned the whole rest of the job and sorted it, every chunk: a
        1,000,000-task job read ~100M rows. Spans left empty by finished tasks
        are read past, one short statement each.
        """
        rows: list[tuple[int, str, int | None]] = []
        while read_from < below and len(rows) < PUBLISH_CHUNK:
            span_end = min(read_from + PUBLISH_CHUNK, below)
            want = PUBLISH_CHUNK - len(rows)
            # Plain tuples: a dict per row was ~4 % of a worker publishing a big job.
            with connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
                got = cur.execute(
                    Q.pending_tasks_between,
                    {"job_id": self.job_id, "from_task": read_from, "below": span_end,
                     "limit": want},
                ).fetchall()  # fmt: skip
            rows += got
            read_from = got[-1][0] + 1 if len(got) == want else span_end
        return rows, read_from

    def _settle(self, chunk: _Chunk, advance: bool) -> tuple[int, bool]:
        """Wait for a chunk's publishing, fail its tasks too large to publish, record
        its stream sequences (and move the resume point past it, with `advance`);
        (tasks published, job still started)."""
        try:
            published, too_large = chunk.future.result(CHUNK_TIMEOUT_S)
        except Exception as exc:
            chunk.future.cancel()  # a no-op if it ended; else it stops here
            # Teardown deleted the stream under us (cancel): publishes then
            # fail (no responders, or a timeout). Stop; never re-create it.
            if not self._started():
                extra = {"job_id": self.job_id, "error": type(exc).__name__}
                log.info("fill stopped: stream gone after cancel", extra=extra)
                return 0, False
            raise
        if too_large:
            self.next_in_order = None  # later tasks sit one place earlier each
            if not self._fail_too_large(too_large):
                return len(published), False
        # Only the places the PubAcks contradict are written (a first fill into a
        # fresh stream: none). A task too large has no message: no place (0).
        moved = [
            (task_no, seq)
            for task_no, seq in [*published, *((t[0], 0) for t in too_large)]
            if chunk.placed.get(task_no) != seq
        ]
        if moved:
            self.next_in_order = None  # the stream is not as guessed: stop guessing
        return len(published), self._bind(moved, chunk.end if advance else None)

    async def _publish_chunk(
        self,
        nc: NATS,
        js: JetStreamContext,
        chunk: Sequence[tuple[int, bytes]],
        after: _Chunk | None = None,
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
        """Publish the tasks of `chunk` that fit the server's max_payload (as the
        connection knows it now), once the chunk `after` is stored: the stream
        holds the tasks in task order. Returns the published ones as (task_no,
        stream sequence) and the others as (task_no, size, limit)."""
        if after is not None:
            await asyncio.wrap_future(after.future)
        limit = nc.max_payload
        fits: list[tuple[int, bytes]] = []
        too_large: list[tuple[int, int, int]] = []
        for task_no, payload in chunk:
            size = task_message_size(self.job_id, task_no, payload)
            if size > limit:
                too_large.append((task_no, size, limit))
            else:
                fits.append((task_no, payload))
        if not fits:
            return [], too_large
        seqs = await publish_tasks(
            nc, self.names, self.job_id, fits, self.settings.publish_window,
            announce=None if self.notice is None else lambda: self._announce(nc),
            announce_after=ANNOUNCE_AFTER,
        )  # fmt: skip
        return [(task_no, seq) for (task_no, _), seq in zip(fits, seqs, strict=True)], too_large

    async def _announce(self, nc: NATS) -> None:
        """Send the CREATED notice if not sent yet (on the bridge's loop, as every
        use of `self.notice`). Sent once ANNOUNCE_AFTER tasks (a small job's
        all) are stored, not when the stream is made: a processor's first pull
        then takes as much as it may at once, where a pull racing the
        publishing got a task or two at a time (a 20-task job took 4 pulls, now 2)."""
        if self.notice is not None:
            body, self.notice = self.notice, None
            await notice_job_stream(nc, self.names, "CREATED", body)

    def _fail_too_large(self, tasks: list[tuple[int, int, int]]) -> bool:
        """Fail tasks no message can carry, counted like results; False if that
        finished the job (its follow-up deletes the stream)."""
        rows: list[ResultRow] = [
            (task_no, "failed", None, storable_error(
                f"task message of {size:,} bytes exceeds the NATS server's "
                f"max_payload of {limit:,} bytes"), 0)
            for task_no, size, limit in tasks
        ]  # fmt: skip
        with connection() as conn:
            _, moved, finalized = record_results(conn, self.job_id, rows)
            record_event(
                conn, self.job_id, "tasks_too_large", "warning",
                count=len(tasks), failed=moved, max_payload=tasks[0][2],
                tasks=[t[0] for t in tasks[:TOO_LARGE_EVENT_TASKS]],
            )  # fmt: skip
        self.too_large += moved
        if finalized is not None:
            self.finalized = finalized
            return False
        return True

    def _place_in_order(self, chunk: Sequence[tuple[int, bytes]]) -> bool:
        """Before a chunk is published: if it goes in order into a fresh stream,
        say where its tasks will sit (placed_count); False if the job is no
        longer started. A chunk that does not (a task skipped, one too large for
        the server's limit as known now) ends the guessing for this fill."""
        first = self.next_in_order
        if first is None:
            return True
        limit = self.max_payload
        contiguous = chunk[0][0] == first and chunk[-1][0] == first + len(chunk) - 1
        if not contiguous or any(task_message_size(self.job_id, t, p) > limit for t, p in chunk):
            self.next_in_order = None
            return True
        self.next_in_order = first + len(chunk)
        with connection() as conn:
            row = conn.execute(
                Q.advance_placed, {"job_id": self.job_id, "placed": self.next_in_order}
            ).fetchone()
        return row is not None

    def _reset_placed(self) -> None:
        """Forget the places a fill before this one guessed (it may have died)."""
        with connection() as conn:
            conn.execute(Q.reset_placed, {"job_id": self.job_id})

    def _record(self, created: datetime) -> bool:
        """Record the stream incarnation the published tasks are in; False if the
        job is no longer started."""
        with connection() as conn:
            row = conn.execute(
                Q.record_stream_incarnation, {"job_id": self.job_id, "created": created}
            ).fetchone()
        return row is not None

    def _bind(self, published: Sequence[tuple[int, int]], advance_to: int | None) -> bool:
        """Record where each published task sits in the stream and, with
        `advance_to`, move the resume point there, in one transaction; False if
        the job is no longer started. With no places to record (a first fill
        into a fresh stream) the one statement left needs no transaction of its
        own: two round trips fewer for a small job."""
        with connection() as conn, conn.transaction() if published else contextlib.nullcontext():
            if published:
                task_nos = [p[0] for p in published]
                conn.execute(
                    Q.record_stream_seqs,
                    {"job_id": self.job_id, "task_nos": task_nos,
                     "seqs": [p[1] for p in published],
                     "rows": lock_listed_tasks(conn, self.job_id, task_nos)},
                )  # fmt: skip
            if advance_to is None:
                row = conn.execute(Q.job_statuses, {"job_ids": [self.job_id]}).fetchone()
            else:
                row = conn.execute(
                    Q.advance_published, {"job_id": self.job_id, "published": advance_to}
                ).fetchone()
        return row is not None and row["status"] == Status.STARTED

    def _forget(self, published: int) -> None:
        """The stream was re-created: the tasks below `published` have no place in
        it until republished (see sql/queries/streams.sql, forget_stream_seqs)."""
        with connection() as conn:
            conn.execute(Q.forget_stream_seqs, {"job_id": self.job_id, "published": published})

    def _advance(self, published: int) -> bool:
        """Move the resume point forward; False if the job is no longer started."""
        return self._bind([], published)

    def _started(self) -> bool:
        with connection() as conn:
            row = conn.execute(Q.job_statuses, {"job_ids": [self.job_id]}).fetchone()
        return row is not None and row["status"] == Status.STARTED

    def _stop(self, why: str) -> Fill:
        """The job is not started: delete the stream this fill may have (re)made.

        Whoever moved the job out of started tears it down (a cancel) or asks
        for it (the finalize winner); deleting again is idempotent, and a
        stream made after that teardown would otherwise stay for ever.
        """
        bridge().run(lambda nc, js: delete_job_stream(nc, js, self.names))
        log.info("fill stopped", extra={"job_id": self.job_id, "reason": why})
        return Fill(FillEnd.STOPPED, too_large=self.too_large, finalized=self.finalized)
