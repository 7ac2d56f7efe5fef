"""Teardown: delete a finished or canceling job's stream; finish a cancel.

Deleting the stream (and with it the consumer) is what stops processors from
serving more of the job. For a canceling job, every task still pending
becomes `cancelled` and the job moves to `revoked`, in one transaction.
"""

from __future__ import annotations

import logging

from psycopg import Rollback

from jobsys.db import connection
from jobsys.events import record_event
from jobsys.hooks import kick as kick_hook
from jobsys.messages import send_teardown
from jobsys.queries import Q
from jobsys.queue import JobNames, bridge, delete_job_stream
from jobsys.settings import get_settings
from jobsys.states import FINAL, Status, transition

log = logging.getLogger(__name__)


def run_teardown(job_id: int, reason: str = "teardown") -> Status | None:
    """Tear down `job_id` if it is canceling or final; returns its status after."""
    names = JobNames.of(get_settings().namespace, job_id)
    with connection() as conn:
        job = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    if job is None:
        return None
    status = Status(job["status"])
    if status not in FINAL and status != Status.CANCELING:
        log.warning("teardown of an active job ignored", extra={"job_id": job_id, "status": status})
        return status
    if status in FINAL:
        # Every path to a final status runs teardown: this is where the
        # completion hook is sent (before NATS, which it does not need).
        kick_hook(job_id)

    deleted = bridge().run(lambda nc, js: delete_job_stream(js, names))
    if status == Status.CANCELING:
        status = revoke(job_id, reason) or status
        if status == Status.REVOKED:
            kick_hook(job_id)
    if deleted:
        with connection() as conn:
            record_event(conn, job_id, "stream_deleted", stream=names.stream, reason=reason)
    return status


def request_teardown(job_id: int) -> None:
    """A finalize winner's follow-up: enqueue the job's teardown, or run it here
    when Redis cannot take the message (a final job must not keep its stream)."""
    try:
        send_teardown(job_id)
    except Exception as exc:
        log.warning("teardown not enqueued; running it here",
                    extra={"job_id": job_id, "error": repr(exc)})  # fmt: skip
        run_teardown(job_id, reason="teardown not enqueued")


def revoke(job_id: int, reason: str) -> Status | None:
    """canceling -> revoked with every pending task cancelled; None if another won."""
    with connection() as conn, conn.transaction():
        # Tasks first, then the job row: the same lock order as a result
        # batch, so a late batch and a revoke never deadlock.
        row = conn.execute(Q.cancel_pending_tasks, {"job_id": job_id}).fetchone()
        moved = transition(conn, job_id, Status.REVOKED, {Status.CANCELING}, reason)
        if moved is None:
            raise Rollback()
        record_event(conn, job_id, "tasks_cancelled", count=row["cancelled"] if row else 0)
        return moved.status
    return None
