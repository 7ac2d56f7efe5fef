"""Counting results exactly once: the ledger moves, the counters follow.

One result batch is one transaction: tasks move ``pending -> done|failed``
(only rows that really move are counted), exactly those counts are added to
the job's counter columns with SQL arithmetic, and the job is finalized if
every task is now accounted for. A replayed or late batch moves nothing and
so counts nothing. NATS messages are acked by the caller only after commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobsys.db import Conn, connection
from jobsys.events import record_event
from jobsys.models import ResultBatch, TaskResult
from jobsys.queries import Q
from jobsys.queue import JobNames, parse_ack_subject
from jobsys.settings import get_settings
from jobsys.states import FINAL, FINALIZABLE, OUTCOME, Status, transition

log = logging.getLogger(__name__)


@dataclass
class Applied:
    """What applying one batch did."""

    job_known: bool
    moved_done: int = 0
    moved_failed: int = 0
    finalized: Status | None = None
    ack: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _reject_reason(r: TaskResult, names: JobNames, total: int) -> str | None:
    ack = parse_ack_subject(r.reply)
    if ack is None:
        return "reply is not a JetStream ack subject"
    if ack.stream != names.stream or ack.consumer != names.consumer:
        return f"reply belongs to stream {ack.stream!r}, not this job's"
    if r.task >= total:
        return f"task {r.task} is out of range (job has {total} tasks)"
    return None


def _result_text(r: TaskResult, limit: int) -> tuple[str, str | None, str | None]:
    """(status, result json, error) to store; an oversized result fails its task."""
    if r.status == "failed":
        return "failed", None, r.error
    text = json.dumps(r.result)
    if len(text) > limit:
        return "failed", None, f"result of {len(text):,} bytes exceeds the {limit:,} byte limit"
    return "done", text, None


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

    One transaction; `rows` must already be validated. Returns (moved done,
    moved failed, the final status if this call finalized the job). This is
    the whole counting path without the NATS reply checks (the bench drives
    it directly).
    """
    params = {
        "job_id": job_id,
        "task_nos": [r[0] for r in rows],
        "statuses": [r[1] for r in rows],
        "results": [r[2] for r in rows],
        "errors": [r[3] for r in rows],
        "deliveries": [r[4] for r in rows],
    }
    finalized: Status | None = None
    with conn.transaction():
        row = conn.execute(Q.record_results, params).fetchone()
        if row is None:
            return 0, 0, None
        accounted = row["done_count"] + row["failed_count"] + row["lost_count"]
        if row["status"] in FINALIZABLE and accounted >= row["total_count"]:
            moved = transition(conn, job_id, OUTCOME, FINALIZABLE, "all tasks accounted for")
            if moved is not None:
                finalized = moved.status
    return row["moved_done"], row["moved_failed"], finalized


def apply_results(batch: ResultBatch) -> Applied:
    """Record a batch in the ledger and counters; finalize the job if complete."""
    settings = get_settings()
    names = JobNames.of(settings.namespace, batch.job_id)
    with connection() as conn:
        job = conn.execute(Q.get_job, {"job_id": batch.job_id}).fetchone()
        if job is None:
            record_event(
                conn, None, "results_rejected", "warning",
                reason="unknown job", job=batch.job_id, tasks=len(batch.results),
            )  # fmt: skip
            return Applied(job_known=False)

        out = Applied(job_known=True)
        valid: list[TaskResult] = []
        reasons: dict[str, int] = {}
        for r in batch.results:
            reason = _reject_reason(r, names, job["total_count"])
            if reason is None:
                valid.append(r)
            else:
                out.rejected.append(r.reply)
                reasons[reason] = reasons.get(reason, 0) + 1
        if reasons:
            record_event(
                conn, batch.job_id, "results_rejected", "warning",
                reasons=reasons, count=len(out.rejected),
            )  # fmt: skip
        if not valid:
            return out

        stored = [_result_text(r, settings.max_result_bytes) for r in valid]
        rows = [
            (r.task, status, text, error, r.deliveries)
            for r, (status, text, error) in zip(valid, stored, strict=True)
        ]
        out.moved_done, out.moved_failed, out.finalized = record_results(conn, batch.job_id, rows)
        if out.moved_done + out.moved_failed == 0:
            _note_late(conn, batch.job_id, len(valid))
        out.ack = [r.reply for r in valid]
    if out.finalized is not None:
        log.info("job finished", extra={"job_id": batch.job_id, "status": str(out.finalized)})
    return out
