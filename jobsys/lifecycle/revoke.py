"""Revoke: a canceling job's pending tasks cancelled and the job moved to revoked.

The last step of a cancel, after its stream is deleted (jobsys.api.cancel,
the teardown actor, or the reconciler past the cancel grace period).

A job of a million tasks is not cancelled in one transaction: its pending
tasks are cancelled in chunks of `JOBSYS_CANCEL_CHUNK_ROWS` by task number,
each chunk with its counter in one short transaction, so the counters equal
the ledger at every commit and no lock is held for long; the last transaction
sweeps whatever is still pending (a fill that raced the cancel) and moves the
job to revoked. Any number of revokers may run at once (the cancel, the
teardown actor, the reconciler): a task is cancelled and counted once,
because only a pending row moves and its move and count commit together.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from psycopg import Rollback
from psycopg.errors import LockNotAvailable

from jobsys.lifecycle.finalize import finishing
from jobsys.lifecycle.states import Status
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.queries import Q
from jobsys.pg.waits import limit_lock_wait
from jobsys.settings import get_settings

log = logging.getLogger(__name__)

# Task numbers start at 0: the first chunk starts after this.
BEFORE_FIRST_TASK = -1


class CountMismatch(RuntimeError):
    """A chunk moved tasks of a job no longer canceling (must never commit)."""


def revoke(
    job_id: int, reason: str, *, until: float | None = None, after: int = BEFORE_FIRST_TASK
) -> Status | None:
    """canceling -> revoked with every pending task cancelled, in chunks of the task
    numbers past `after` (an earlier revoke cancelled those up to it; the last
    transaction sweeps the whole job all the same).

    Returns REVOKED when done, CANCELING if `until` (a `time.monotonic()`
    deadline) came first (the caller hands the rest to the teardown actor),
    None if the job was not canceling.
    """
    return revoke_until(job_id, reason, until=until, after=after)[0]


def revoke_until(
    job_id: int, reason: str, *, until: float | None, after: int = BEFORE_FIRST_TASK
) -> tuple[Status | None, int]:
    """`revoke`, and the task number its chunks reached: when the deadline came
    first (CANCELING), the next revoke may start after it."""
    rows = get_settings().cancel_chunk_rows
    cancelled = 0
    while True:
        if until is not None and time.monotonic() >= until:
            log.info("revoke continues elsewhere", extra={"job_id": job_id, "cancelled": cancelled})
            return Status.CANCELING, after
        try:
            chunk = _cancel_chunk(job_id, after, rows, until)
        except LockNotAvailable:
            # A person waits on this revoke: a row held past its deadline (a
            # frozen holder) leaves the rest to the teardown actor.
            log.info("revoke continues elsewhere: job row held", extra={"job_id": job_id})
            return Status.CANCELING, after
        if chunk is None:
            return None, after
        cancelled += chunk["cancelled"]
        last = chunk["last"]
        # Task numbers run 0 to total - 1 without gaps: a span that ended
        # short of `rows` numbers reached the last task, and nothing is left
        # to wait for (nor a statement to spend on finding nothing).
        if last is None or last < after + rows:
            return _revoked(job_id, reason, cancelled), after
        after = last


def _cancel_chunk(job_id: int, after: int, rows: int, until: float | None) -> dict[str, Any] | None:
    """Cancel the pending tasks of the next span of `rows` task numbers after
    `after`, with their count, in one transaction; None if the job is not
    canceling. With `until`, a lock on the job's row is waited for only
    until then (LockNotAvailable)."""
    with connection() as conn, conn.transaction():
        if until is not None:
            limit_lock_wait(conn, until - time.monotonic())
        chunk = conn.execute(
            Q.cancel_pending_chunk, {"job_id": job_id, "after": after, "rows": rows}
        ).fetchone()
        assert chunk is not None  # a bare SELECT: always one row
        if not chunk["canceling"]:
            if chunk["cancelled"]:
                raise CountMismatch(f"job {job_id}: tasks moved while not canceling")
            return None
    return chunk


def _revoked(job_id: int, reason: str, cancelled: int) -> Status | None:
    """The last transaction: what is still pending cancelled, the job revoked."""
    with connection() as conn, finishing(conn) as fin:
        # Tasks first, then the job row: the same lock order as a result
        # batch, so a late batch and a revoke never deadlock.
        row = conn.execute(Q.cancel_pending_tasks, {"job_id": job_id}).fetchone()
        status = fin.revoke(job_id, reason)
        if status is None:
            raise Rollback()
        # Every chunk's count, whichever revoker cancelled it.
        record_event(conn, job_id, "tasks_cancelled",
                     count=row["cancelled_in_all"] if row else cancelled)  # fmt: skip
        return status
    return None
