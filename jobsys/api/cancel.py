"""Cancelling a job: canceling, its stream deleted (its work stops), then revoked.

A final job is left exactly as it is. If the stream cannot be deleted here
(NATS down), the teardown actor is asked to finish the cancel, and the
reconciler forces it after the cancel grace period.

The work stops when the stream is deleted, before `cancel` returns. Pending
tasks are then cancelled in chunks (jobsys.lifecycle.revoke) for at most
INLINE_REVOKE_S here; a bigger job returns `canceling` and the teardown actor
cancels the rest and revokes it, so a cancel returns in well under a second
whatever the job's size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from jobsys.api.read import get_job
from jobsys.dramatiq.messages import send_teardown
from jobsys.lifecycle.revoke import revoke_until
from jobsys.lifecycle.states import CANCELABLE, Status, transition
from jobsys.lifecycle.teardown import run_teardown
from jobsys.pg.db import connection
from jobsys.pg.events import actor, record_event
from jobsys.pg.waits import bounded_row_wait, limit_lock_wait
from jobsys.settings import get_settings

log = logging.getLogger(__name__)

# How long `cancel` itself cancels pending tasks before it leaves the rest to
# the teardown actor (a person waits for this call); the actor goes on from
# the chunk this one reached. A job with more than INLINE_REVOKE_CHUNKS
# chunks pending is left to the actor at once.
INLINE_REVOKE_S = 0.25
INLINE_REVOKE_CHUNKS = 5


@dataclass(frozen=True)
class CancelResult:
    """What `cancel` did."""

    job_id: int
    status: str
    changed: bool


def cancel(job_id: int, *, by: Mapping[str, str] | None = None) -> CancelResult:
    """queued|started -> canceling, then teardown (stream deleted, tasks cancelled, revoked).

    A final job is left exactly as it is (`changed=False`). If teardown cannot
    run here (NATS down), it is enqueued, and the reconciler forces it after
    the cancel grace period. `by` (who asked) is written into the job's
    events with the move to canceling. If another session holds the job's
    row past JOBSYS_LOCK_WAIT_S, JobBusy is raised and nothing changed.
    """
    with bounded_row_wait(job_id) as wait, connection() as conn, conn.transaction():
        limit_lock_wait(conn, wait)
        moved = transition(conn, job_id, Status.CANCELING, CANCELABLE, "cancel requested")
        if moved is not None and by:
            record_event(conn, job_id, "cancel_requested", **actor(by))
    if moved is None:
        job = get_job(job_id)
        if job.status == Status.CANCELING:
            # An earlier cancel whose teardown failed (or is running now):
            # teardown is idempotent, so finishing it here is harmless.
            _teardown(job_id, job.pending)
            job = get_job(job_id)
        return CancelResult(job_id, job.status, False)
    _teardown(job_id, moved.pending)
    return CancelResult(job_id, get_job(job_id).status, True)


def _teardown(job_id: int, pending: int) -> None:
    """Delete the stream, then revoke (a job with more than INLINE_REVOKE_CHUNKS
    chunks pending: in the teardown actor); on failure, leave both to the
    teardown actor."""
    try:
        run_teardown(job_id, reason="cancel")
        if pending > INLINE_REVOKE_CHUNKS * get_settings().cancel_chunk_rows:
            # Its work stopped with the stream: the person need not wait
            # for a revoke that would not end in time anyway.
            send_teardown(job_id)
            return
        status, after = revoke_until(job_id, "cancel", until=time.monotonic() + INLINE_REVOKE_S)
        if status == Status.CANCELING:
            # The teardown actor goes on past the chunks done here.
            send_teardown(job_id, revoke_after=after)
    except Exception as exc:
        log.warning("inline teardown failed", extra={"job_id": job_id, "error": repr(exc)})
        try:
            send_teardown(job_id)
        except Exception:
            log.warning("teardown not enqueued", extra={"job_id": job_id})
