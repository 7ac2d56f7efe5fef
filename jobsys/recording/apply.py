"""Recording one result batch: screened, bound, counted exactly once, acks decided.

The worker's `process_results` actor calls `apply_results` and, after it
returns (committed), acks the replies it lists. Each item stands alone: a
malformed item, one whose reply is not this job's, or one whose reply points
at no message of its task is rejected (an event with the reason; not
counted, not acked); a result that cannot be stored fails its task; a task
reported twice counts once; a batch Postgres refuses is split so only the
refused tasks fail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from jobsys.lifecycle.states import Status
from jobsys.models import ResultBatch, TaskResult
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.queries import Q
from jobsys.recording.binding import (
    MAX_TASKS_IN_EVENT,
    Lookup,
    bind_unbound,
    reject_misbound,
    screen,
)
from jobsys.recording.counting import note_late, record_or_split, repeated, rows_of
from jobsys.settings import get_settings

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


def apply_results(batch: ResultBatch, lookup: Lookup) -> Applied:
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

        valid, rejected, reasons = screen(batch, job["total_count"])
        out = Applied(job_known=True, rejected=rejected)
        if reasons:
            record_event(
                conn, batch.job_id, "results_rejected", "warning",
                reasons=reasons, count=len(out.rejected),
            )  # fmt: skip
        if not valid:
            return out

        rows, seqs = rows_of(valid, settings.max_result_bytes)
        recorded = record_or_split(conn, batch.job_id, rows, seqs)
        misbound: list[tuple[TaskResult, str]] = []
        if recorded.unbound:
            checked, misbound = bind_unbound(
                conn, batch.job_id, valid, recorded.unbound, settings.max_result_bytes, lookup
            )
            recorded.add(checked)
        if misbound:
            reject_misbound(conn, batch.job_id, misbound)
            out.rejected.extend(r.reply for r, _ in misbound)
            unacked = {id(r) for r, _ in misbound}
            valid = [(r, seq) for r, seq in valid if id(r) not in unacked]
        out.moved_done, out.moved_failed = recorded.moved_done, recorded.moved_failed
        out.finalized = recorded.finalized
        twice = repeated(valid)
        # Tasks of the batch that moved nothing (a task reported twice is one).
        # In the batch that made the job final they were counted already.
        unmoved = len({r.task for r, _ in valid}) - out.moved_done - out.moved_failed
        if unmoved > 0 and out.finalized is None:
            note_late(conn, batch.job_id, unmoved)
        if twice:
            record_event(
                conn, batch.job_id, "results_repeated", "info",
                count=len(twice), tasks=twice[:MAX_TASKS_IN_EVENT],
            )  # fmt: skip
        if recorded.refused:
            log.warning(
                "database refused results; their tasks failed",
                extra={"job_id": batch.job_id, "tasks": len(recorded.refused)},
            )
            record_event(
                conn, batch.job_id, "results_refused", "warning",
                count=len(recorded.refused),
                tasks=sorted(recorded.refused)[:MAX_TASKS_IN_EVENT],
                reason=next(iter(recorded.refused.values())),
            )  # fmt: skip
        # Every reply of a recorded task, repeats included: each is a stream
        # message of its own that must not be delivered again.
        out.ack = [r.reply for r, _ in valid]
    return out
