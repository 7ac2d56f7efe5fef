"""Handler of `counters_drift`: the job's counter columns set from its ledger."""

from __future__ import annotations

from jobsys.lifecycle.finalize import finishing
from jobsys.lifecycle.states import Status
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler.findings import Handled
from jobsys.reconciler.kinds import Action
from jobsys.reconciler.state import COUNTERS, Seen


def repair_counters(job_id: int) -> tuple[dict[str, int] | None, Status | None]:
    """Set a job's counters from the ledger; returns (counters before, finalized status).

    Lock order: the job row first (SELECT ... FOR UPDATE), then a fresh
    statement counts the ledger. Result batches lock their tasks and then the
    job row; we lock no task row (the count is a plain MVCC read), so there is
    no cycle and no deadlock. Under READ COMMITTED the count's snapshot starts
    after we hold the row lock: a batch that already added to the counters
    has committed and is in the count; a batch still open has not touched the
    job row yet, its task moves are invisible to the count, and it adds its
    share on top of the repaired values after we commit. A one-statement
    "UPDATE ... FROM (count)" would not be safe: its count snapshot predates
    the row lock it may wait for, so it could overwrite a batch's increment.
    """
    with connection() as conn, finishing(conn) as fin:
        before = conn.execute(Q.lock_job_row, {"job_id": job_id}).fetchone()
        if before is None:
            return None, None
        row = conn.execute(Q.repair_counters, {"job_id": job_id}).fetchone()
        if row is None:
            return None, None
        final = fin.finish(job_id, "reconcile: counters repaired from the ledger")
    return {k: before[f"{k}_count"] for k in COUNTERS}, final


def counters_drift(seen: Seen) -> Handled:
    """Counters differ from the ledger's counts: set them from the ledger, finalize if complete."""
    before, final = repair_counters(seen.job_id)
    if before is None:
        return Handled(Action.NONE, {"reason": "counters already agreed with the ledger"})
    return Handled(Action.REPAIRED, {"before": before}, finalized=final)
