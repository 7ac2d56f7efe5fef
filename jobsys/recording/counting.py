"""Counting outcomes exactly once: the ledger moves, the counters follow.

One set of task outcomes is one transaction: tasks move ``pending ->
done|failed`` (only rows that really move are counted), exactly those counts
are added to the job's counter columns with SQL arithmetic, and the job is
finished if every task is now accounted for (jobsys.lifecycle.finalize). A
replayed or late batch moves nothing and so counts nothing.

Each task stands alone: a value that cannot be stored fails only its task, a
task reported twice counts once, and a batch Postgres still refuses is split
(halves, then single rows, each its own transaction) so that only the
refused tasks fail.

A result counts only for the task whose message its reply points at: the
counting statement takes the items naming the task's recorded place in the
stream (`job_tasks.stream_seq`); any other item comes back `unbound`, for
jobsys.recording.binding to check against the stream itself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from jobsys.lifecycle.finalize import finishing
from jobsys.lifecycle.states import FINAL, Status
from jobsys.models import TaskResult
from jobsys.pg.db import Conn
from jobsys.pg.events import record_event
from jobsys.pg.queries import Q
from jobsys.storable import encode_result, storable_error
from jobsys.testing.pauses import Pause, pause

# What the database says when it refuses a batch because of the values in it:
# SQLSTATE classes 22 (data exception) and 23 (integrity constraint), and
# psycopg's own DataError for a value it cannot send (a NUL in a text).
# Anything else (a lost connection, ...) is raised, and the message retried.
REFUSALS = (psycopg.DataError, psycopg.IntegrityError)

# A refusal's DETAIL is kept in the task's error only when it is this short.
_MAX_DETAIL_CHARS = 200


# One task's outcome as stored: (task_no, status, result json text, error,
# deliveries), and for a failure an exception said, (..., error type, traceback).
ResultRow = (
    tuple[int, str, str | None, str | None, int]
    | tuple[int, str, str | None, str | None, int, str | None, str | None]
)


def _detail(row: Sequence[Any], index: int) -> Any:
    """A row's error type (5) or traceback (6); None for a five-field row."""
    return row[index] if len(row) > index else None


# One reported outcome and the stream sequence its reply names (None: not checked
# against the recorded one: the caller checked it against the stream).
Item = tuple[TaskResult, int | None]


@dataclass
class Recorded:
    moved_done: int = 0
    moved_failed: int = 0
    finalized: Status | None = None
    refused: dict[int, str] = field(default_factory=dict)
    # (task, sequence) of items whose sequence is not the task's recorded one.
    unbound: set[tuple[int, int]] = field(default_factory=set)

    def add(self, other: Recorded) -> None:
        self.moved_done += other.moved_done
        self.moved_failed += other.moved_failed
        self.finalized = self.finalized or other.finalized
        self.refused.update(other.refused)
        self.unbound |= other.unbound


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
) -> Recorded:
    """`record_results` for rows whose replies name stream sequences (`seqs`, None:
    checked already): a task whose items do not all name its recorded sequence
    is not moved; its (task, sequence) pairs come back in `unbound`."""
    params = counting_params(job_id, rows, seqs)
    out = Recorded()
    with finishing(conn) as fin:
        row = conn.execute(Q.record_results, params).fetchone()
        assert row is not None  # always one row
        out.unbound = set(zip(row["unbound_tasks"] or [], row["unbound_seqs"] or [], strict=True))
        if row["moved_done"] is None:
            return out
        out.moved_done, out.moved_failed = row["moved_done"], row["moved_failed"]
        pause(Pause.IN_RESULTS_TRANSACTION, job_id)
        accounted = row["done_count"] + row["failed_count"] + row["lost_count"]
        if accounted >= row["total_count"]:
            out.finalized = fin.finish(job_id, "all tasks accounted for")
    return out


def int_array(values: Iterable[int]) -> str:
    """An int[] literal: psycopg's list dumper costs ~1 us an element in Python."""
    return "{" + ",".join(map(str, values)) + "}"


def lock_listed_tasks(conn: Conn, job_id: int, task_nos: Iterable[int]) -> list[str]:
    """Lock the listed tasks of a job, in task order, in the caller's transaction;
    their row versions (ctids, as text) for a statement after it to update by
    (sql/queries/core.sql, lock_listed_tasks)."""
    rows = conn.execute(
        Q.lock_listed_tasks, {"job_id": job_id, "task_nos": int_array(task_nos)}
    ).fetchall()
    return [r["row_id"] for r in rows]


def counting_params(
    job_id: int, rows: Sequence[ResultRow], seqs: Sequence[int | None]
) -> dict[str, Any]:
    """The parameters of the counting statement (`Q.record_results`) for `rows`."""
    return {
        "job_id": job_id,
        "task_nos": int_array(r[0] for r in rows),
        "input": _input_json(rows, seqs),
    }


def _input_json(rows: Sequence[ResultRow], seqs: Sequence[int | None]) -> str:
    """The batch as one JSON array of rows, for the counting statement to unnest.

    One C-speed encode instead of eight Python-built arrays (psycopg's list
    dumper was ~12 % of the worker's CPU). A text orjson refuses (a lone
    surrogate) goes through json, whose escape Postgres refuses in turn: the
    batch is split and only that task fails, as with any refused value.
    """
    table = [
        (r[0], r[1], r[2], r[3], r[4], seq, _detail(r, 5), _detail(r, 6))
        for r, seq in zip(rows, seqs, strict=True)
    ]
    try:
        return orjson.dumps(table).decode()
    except orjson.JSONEncodeError:
        return json.dumps(table)


def _outcome(r: TaskResult, max_bytes: int) -> ResultRow:
    """The row one reported outcome stores; a result that cannot be stored fails its task."""
    if r.status == "failed":
        # Already storable if it came through TaskResult's validation; cheap to be sure.
        reason = storable_error(r.error)
        return r.task, "failed", None, reason, r.deliveries, r.error_type, r.error_trace
    text, error = encode_result(r.result, max_bytes)
    if text is None:
        return r.task, "failed", None, error, r.deliveries
    return r.task, "done", text, None, r.deliveries


def rows_of(items: Sequence[Item], max_bytes: int) -> tuple[list[ResultRow], list[int | None]]:
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
        deliveries = max(prev[4], row[4])
        if len(keep) > 5:
            by_key[(r.task, seq)] = (*keep[:4], deliveries, _detail(keep, 5), _detail(keep, 6))
        else:
            by_key[(r.task, seq)] = (keep[0], keep[1], keep[2], keep[3], deliveries)
    return list(by_key.values()), [seq for _, seq in by_key]


def repeated(items: Sequence[Item]) -> list[int]:
    """Tasks reported more than once in the batch."""
    seen = Counter(r.task for r, _ in items)
    return sorted(task for task, n in seen.items() if n > 1)


def _refusal(exc: psycopg.Error) -> str:
    """The database's reason, short and storable (a CHECK's DETAIL repeats the whole row)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc)
    detail = getattr(diag, "message_detail", None)
    if detail and len(detail) <= _MAX_DETAIL_CHARS:
        primary = f"{primary} ({detail})"
    return storable_error(f"the database refused this task's outcome: {primary}")


def record_or_split(
    conn: Conn, job_id: int, rows: Sequence[ResultRow], seqs: Sequence[int | None]
) -> Recorded:
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
            out = record_or_split(conn, job_id, rows[:mid], seqs[:mid])
            out.add(record_or_split(conn, job_id, rows[mid:], seqs[mid:]))
            return out
        reason = _refusal(exc)
    task, deliveries = rows[0][0], rows[0][4]
    try:
        out = _record(conn, job_id, [(task, "failed", None, reason, deliveries)], seqs)
    except REFUSALS:
        # Not even the reason could be stored: store one that surely can be.
        reason = "the database refused this task's outcome"
        out = _record(conn, job_id, [(task, "failed", None, reason, deliveries)], seqs)
    if not out.unbound:
        out.refused[task] = reason
    return out


def note_late(conn: Conn, job_id: int, count: int) -> None:
    """`count` results of a batch moved nothing: if the job is being cancelled
    or is final, say so in its event log.

    A cancel moves pending tasks to `cancelled` chunk by chunk, and after
    revoke every one is, so results that arrive meanwhile or later
    (processors finishing work they had started) move no row and no counter;
    the event is the trace that they came. Results that move nothing for a
    started job are redeliveries and need no event.
    """
    job = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    if job is not None and (job["status"] in FINAL or job["status"] == Status.CANCELING):
        record_event(conn, job_id, "late_results", count=count, status=job["status"])
