"""Counting results exactly once: the ledger moves, the counters follow.

One result batch is one transaction: tasks move ``pending -> done|failed``
(only rows that really move are counted), exactly those counts are added to
the job's counter columns with SQL arithmetic, and the job is finalized if
every task is now accounted for. A replayed or late batch moves nothing and
so counts nothing. NATS messages are acked by the caller only after commit.

Each item stands alone: a malformed one is rejected by itself, a value that
cannot be stored fails only its task, a task reported twice counts once,
and a batch Postgres still refuses is split (halves, then single rows, each
its own transaction) so that only the refused tasks fail.

A result is bound to the message it answers: its reply subject names a
stream sequence, and it counts only for the task whose message sits there.
The counting statement takes the items naming the task's place in the
stream (`job_tasks.stream_seq`, from the PubAcks of its publishing; see
sql/010_result_binding.sql); any other item (a result that beat its chunk's
record, a place not known, another message of the same task, or a forgery)
is checked against the stream itself: the message at that sequence must
carry the task's Nats-Msg-Id. An item that fails the check is rejected
with an event, neither counted nor acked (its sequence may be another task's
live message). See docs/security.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from jobsys.db import Conn, connection
from jobsys.events import record_event
from jobsys.models import MAX_REASON_CHARS, ResultBatch, TaskResult
from jobsys.queries import Q
from jobsys.queue import JobNames, bridge, parse_ack_subject, tasks_of_messages
from jobsys.settings import get_settings
from jobsys.states import FINAL, FINALIZABLE, OUTCOME, Status, transition
from jobsys.storable import encode_result, storable_error

log = logging.getLogger(__name__)

# What the database says when it refuses a batch because of the values in it:
# SQLSTATE classes 22 (data exception) and 23 (integrity constraint), and
# psycopg's own DataError for a value it cannot send (a NUL in a text).
# Anything else (a lost connection, ...) is raised, and the message retried.
REFUSALS = (psycopg.DataError, psycopg.IntegrityError)
# A refusal's DETAIL is kept in the task's error only when it is this short.
_MAX_DETAIL_CHARS = 200
# Events name at most this many tasks (the count says how many in all).
_MAX_TASKS_IN_EVENT = 50
# Reasons a result is not bound to its task (results_rejected events).
ANOTHER_TASKS_MESSAGE = "reply points at another task's message"
NO_TASK_MESSAGE = "reply points at no message of a task in the job's stream"
# How long the stream lookups of one batch's unbound results may take.
LOOKUP_TIMEOUT_S = 30.0


@dataclass
class Applied:
    """What applying one batch did."""

    job_known: bool
    moved_done: int = 0
    moved_failed: int = 0
    finalized: Status | None = None
    ack: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _reject_reason(r: TaskResult, names: JobNames, total: int) -> str | int:
    """Why an item is rejected, or the stream sequence its reply names."""
    ack = parse_ack_subject(r.reply)
    if ack is None:
        return "reply is not a JetStream ack subject"
    if ack.stream != names.stream or ack.consumer != names.consumer:
        return f"reply belongs to stream {ack.stream!r}, not this job's"
    if r.task >= total:
        return f"task {r.task} is out of range (job has {total} tasks)"
    return ack.stream_seq


def _note_late(conn: Conn, job_id: int, count: int) -> None:
    """A batch that moved nothing: if the job is final, say so in its event log.

    After revoke every pending task is already `cancelled`, so results that
    arrive later (processors finishing work they had started) move no row and
    no counter; the event is the trace that they came. A batch that moves
    nothing for an active job is a redelivery and needs no event.
    """
    job = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    if job is not None and job["status"] in FINAL:
        record_event(conn, job_id, "late_results", count=count, status=job["status"])


# One task's outcome as stored: (task_no, status, result json text, error, deliveries).
ResultRow = tuple[int, str, str | None, str | None, int]


def record_results(
    conn: Conn, job_id: int, rows: Sequence[ResultRow]
) -> tuple[int, int, Status | None]:
    """Move `rows` in the ledger, add what moved to the counters, finalize if complete.

    One transaction; `rows` must already be validated and bound to their
    tasks by the caller (a task failed before it was published answers no
    message). Returns (moved done, moved failed, the final status if this
    call finalized the job). This is the whole counting path without the
    NATS reply checks (the bench drives it directly).
    """
    out = _record(conn, job_id, rows, [None] * len(rows))
    return out.moved_done, out.moved_failed, out.finalized


def _record(
    conn: Conn, job_id: int, rows: Sequence[ResultRow], seqs: Sequence[int | None]
) -> _Recorded:
    """`record_results` for rows whose replies name stream sequences (`seqs`, None:
    checked already): a task whose items do not all name its recorded sequence
    is not moved; its (task, sequence) pairs come back in `unbound`."""
    params = {
        "job_id": job_id,
        "task_nos": [r[0] for r in rows],
        "statuses": [r[1] for r in rows],
        "results": [r[2] for r in rows],
        "errors": [r[3] for r in rows],
        "deliveries": [r[4] for r in rows],
        "seqs": list(seqs),
    }
    out = _Recorded()
    with conn.transaction():
        row = conn.execute(Q.record_results, params).fetchone()
        assert row is not None  # always one row
        out.unbound = set(zip(row["unbound_tasks"] or [], row["unbound_seqs"] or [], strict=True))
        if row["moved_done"] is None:
            return out
        out.moved_done, out.moved_failed = row["moved_done"], row["moved_failed"]
        accounted = row["done_count"] + row["failed_count"] + row["lost_count"]
        if row["status"] in FINALIZABLE and accounted >= row["total_count"]:
            moved = transition(conn, job_id, OUTCOME, FINALIZABLE, "all tasks accounted for")
            if moved is not None:
                out.finalized = moved.status
    return out


def _outcome(r: TaskResult, max_bytes: int) -> ResultRow:
    """The row one reported outcome stores; a result that cannot be stored fails its task."""
    if r.status == "failed":
        # Already storable if it came through TaskResult's validation; cheap to be sure.
        return r.task, "failed", None, storable_error(r.error), r.deliveries
    text, error = encode_result(r.result, max_bytes)
    if text is None:
        return r.task, "failed", None, error, r.deliveries
    return r.task, "done", text, None, r.deliveries


# One reported outcome and the stream sequence its reply names (None: not checked
# against the recorded one: the caller checked it against the stream).
Item = tuple[TaskResult, int | None]


def _rows(items: Sequence[Item], max_bytes: int) -> tuple[list[ResultRow], list[int | None]]:
    """One row per (task, sequence), with its sequence.

    A task reported twice for one message in one batch (redelivered while its
    first result was in flight) is one row: the first `done` outcome if any,
    else the first one, with the most deliveries either reported. Its count
    moves once. Items of one task naming different sequences stay apart here;
    at most one of them can be the task's recorded sequence, and the
    counting statement moves such a task only after all are checked.
    """
    by_key: dict[tuple[int, int | None], ResultRow] = {}
    for r, seq in items:
        row = _outcome(r, max_bytes)
        prev = by_key.get((r.task, seq))
        if prev is None:
            by_key[(r.task, seq)] = row
            continue
        keep = row if prev[1] != "done" and row[1] == "done" else prev
        by_key[(r.task, seq)] = (keep[0], keep[1], keep[2], keep[3], max(prev[4], row[4]))
    return list(by_key.values()), [seq for _, seq in by_key]


def _repeated(items: Sequence[Item]) -> list[int]:
    """Tasks reported more than once in the batch."""
    seen = Counter(r.task for r, _ in items)
    return sorted(task for task, n in seen.items() if n > 1)


@dataclass
class _Recorded:
    moved_done: int = 0
    moved_failed: int = 0
    finalized: Status | None = None
    refused: dict[int, str] = field(default_factory=dict)
    # (task, sequence) of items whose sequence is not the task's recorded one.
    unbound: set[tuple[int, int]] = field(default_factory=set)

    def add(self, other: _Recorded) -> None:
        self.moved_done += other.moved_done
        self.moved_failed += other.moved_failed
        self.finalized = self.finalized or other.finalized
        self.refused.update(other.refused)
        self.unbound |= other.unbound


def _refusal(exc: psycopg.Error) -> str:
    """The database's reason, short and storable (a CHECK's DETAIL repeats the whole row)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc)
    detail = getattr(diag, "message_detail", None)
    if detail and len(detail) <= _MAX_DETAIL_CHARS:
        primary = f"{primary} ({detail})"
    return storable_error(f"the database refused this task's outcome: {primary}")


def _record_or_split(
    conn: Conn, job_id: int, rows: Sequence[ResultRow], seqs: Sequence[int | None]
) -> _Recorded:
    """`_record`, and if the database refuses the batch, its halves, down to
    single rows: a refused row is stored as its task's failure with the reason.

    Each part is its own transaction, so each counts exactly what it moved and
    whichever part completes the job finalizes it. Only a refused batch takes
    this path; the happy path is the one statement.
    """
    try:
        return _record(conn, job_id, rows, seqs)
    except REFUSALS as exc:
        if len(rows) > 1:
            mid = len(rows) // 2
            out = _record_or_split(conn, job_id, rows[:mid], seqs[:mid])
            out.add(_record_or_split(conn, job_id, rows[mid:], seqs[mid:]))
            return out
        reason = _refusal(exc)
    task, _status, _result, _error, deliveries = rows[0]
    try:
        out = _record(conn, job_id, [(task, "failed", None, reason, deliveries)], seqs)
    except REFUSALS:
        # Not even the reason could be stored: store one that surely can be.
        reason = "the database refused this task's outcome"
        out = _record(conn, job_id, [(task, "failed", None, reason, deliveries)], seqs)
    if not out.unbound:
        out.refused[task] = reason
    return out


def _bind_unbound(
    conn: Conn, job_id: int, items: Sequence[Item], unbound: set[tuple[int, int]], max_bytes: int
) -> tuple[_Recorded, list[tuple[TaskResult, str]]]:
    """Count the tasks the counting statement left (see `_record`): each of their
    items whose message, looked up in the stream, is the task's own counts (the
    task once, as in `_rows`); the others are returned with the reason."""
    names = JobNames.of(get_settings().namespace, job_id)
    seqs = sorted({seq for _, seq in unbound})
    # The slow path (a result that beat its chunk's record, a republished
    # message, a forgery): seen in the log, to tell how often it is taken.
    log.info("results checked against the stream", extra={"job_id": job_id, "count": len(seqs)})
    found = bridge().run(
        lambda nc, js: tasks_of_messages(js, names, seqs), timeout=LOOKUP_TIMEOUT_S
    )
    held = {task for task, _ in unbound}
    bound: list[Item] = []
    misbound: list[tuple[TaskResult, str]] = []
    for r, seq in items:
        if r.task not in held:
            continue
        if seq is not None and (r.task, seq) in unbound:
            owner = found.get(seq)
            if owner != (job_id, r.task):
                misbound.append((r, NO_TASK_MESSAGE if owner is None else ANOTHER_TASKS_MESSAGE))
                continue
        bound.append((r, None))
    if not bound:
        return _Recorded(), misbound
    rows, checked = _rows(bound, max_bytes)
    return _record_or_split(conn, job_id, rows, checked), misbound


def _screen(batch: ResultBatch, total: int) -> tuple[list[Item], list[str], dict[str, int]]:
    """(items to record with their stream sequences, replies of rejected items,
    {reason: count}) of a batch."""
    names = JobNames.of(get_settings().namespace, batch.job_id)
    valid: list[Item] = []
    rejected = [bad.reply for bad in batch.rejected]
    reasons: Counter[str] = Counter(bad.reason for bad in batch.rejected)
    for r in batch.results:
        reason = _reject_reason(r, names, total)
        if isinstance(reason, int):
            valid.append((r, reason))
        else:
            rejected.append(r.reply)
            # The reason quotes the sender's reply: keep it storable in an event.
            reasons[storable_error(reason)[:MAX_REASON_CHARS]] += 1
    return valid, rejected, dict(reasons)


def apply_results(batch: ResultBatch) -> Applied:
    """Record a batch in the ledger and counters; finalize the job if complete.

    Each item stands alone: a malformed item, one whose reply is not this
    job's, or one whose reply points at no message of its task (see the
    module's docstring) is rejected (an event with the reason; not counted,
    not acked); a result that cannot be stored fails its task; a task
    reported twice counts once; a batch Postgres refuses is split so only
    the refused tasks fail. `ack` lists the replies of every item that was
    recorded (or had been).
    """
    settings = get_settings()
    with connection() as conn:
        job = conn.execute(Q.get_job, {"job_id": batch.job_id}).fetchone()
        if job is None:
            record_event(
                conn, None, "results_rejected", "warning",
                reason="unknown job", job=batch.job_id,
                tasks=len(batch.results) + len(batch.rejected),
            )  # fmt: skip
            return Applied(job_known=False)

        valid, rejected, reasons = _screen(batch, job["total_count"])
        out = Applied(job_known=True, rejected=rejected)
        if reasons:
            record_event(
                conn, batch.job_id, "results_rejected", "warning",
                reasons=reasons, count=len(out.rejected),
            )  # fmt: skip
        if not valid:
            return out

        rows, seqs = _rows(valid, settings.max_result_bytes)
        recorded = _record_or_split(conn, batch.job_id, rows, seqs)
        misbound: list[tuple[TaskResult, str]] = []
        if recorded.unbound:
            checked, misbound = _bind_unbound(
                conn, batch.job_id, valid, recorded.unbound, settings.max_result_bytes
            )
            recorded.add(checked)
        if misbound:
            _reject_misbound(conn, batch.job_id, misbound)
            out.rejected.extend(r.reply for r, _ in misbound)
            unacked = {id(r) for r, _ in misbound}
            valid = [(r, seq) for r, seq in valid if id(r) not in unacked]
        out.moved_done, out.moved_failed = recorded.moved_done, recorded.moved_failed
        out.finalized = recorded.finalized
        repeated = _repeated(valid)
        if repeated:
            record_event(
                conn, batch.job_id, "results_repeated", "info",
                count=len(repeated), tasks=repeated[:_MAX_TASKS_IN_EVENT],
            )  # fmt: skip
        if recorded.refused:
            log.warning(
                "database refused results; their tasks failed",
                extra={"job_id": batch.job_id, "tasks": len(recorded.refused)},
            )
            record_event(
                conn, batch.job_id, "results_refused", "warning",
                count=len(recorded.refused),
                tasks=sorted(recorded.refused)[:_MAX_TASKS_IN_EVENT],
                reason=next(iter(recorded.refused.values())),
            )  # fmt: skip
        if valid and out.moved_done + out.moved_failed == 0:
            _note_late(conn, batch.job_id, len(valid))
        # Every reply of a recorded task, repeats included: each is a stream
        # message of its own that must not be delivered again.
        out.ack = [r.reply for r, _ in valid]
    if out.finalized is not None:
        log.info("job finished", extra={"job_id": batch.job_id, "status": str(out.finalized)})
    return out


def _reject_misbound(conn: Conn, job_id: int, misbound: Sequence[tuple[TaskResult, str]]) -> None:
    """The event of results whose reply points at no message of their task."""
    reasons = Counter(reason for _, reason in misbound)
    tasks = sorted({r.task for r, _ in misbound})
    record_event(
        conn, job_id, "results_rejected", "warning",
        reasons=dict(reasons), count=len(misbound), tasks=tasks[:_MAX_TASKS_IN_EVENT],
    )  # fmt: skip
