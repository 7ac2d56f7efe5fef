"""Revoke: a canceling job's pending tasks cancelled and the job moved to revoked.

The last step of a cancel, after its stream is deleted (jobsys.api.cancel,
the teardown actor, or the reconciler past the cancel grace period).
"""

from __future__ import annotations

from psycopg import Rollback

from jobsys.lifecycle.finalize import finishing
from jobsys.lifecycle.states import Status
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.queries import Q


def revoke(job_id: int, reason: str) -> Status | None:
    """canceling -> revoked with every pending task cancelled; None if it was not canceling."""
    with connection() as conn, finishing(conn) as fin:
        # Tasks first, then the job row: the same lock order as a result
        # batch, so a late batch and a revoke never deadlock.
        row = conn.execute(Q.cancel_pending_tasks, {"job_id": job_id}).fetchone()
        status = fin.revoke(job_id, reason)
        if status is None:
            raise Rollback()
        record_event(conn, job_id, "tasks_cancelled", count=row["cancelled"] if row else 0)
        return status
    return None
