"""Teardown: delete a final or canceling job's stream (and with it its consumer).

That is all teardown means. Deleting the stream is what stops processors
from serving more of the job: on finalize (jobsys.lifecycle.finalize's
follow-up) and on cancel, before the pending tasks are cancelled
(jobsys.lifecycle.revoke). Idempotent: a stream already gone is fine.
"""

from __future__ import annotations

import logging

from jobsys.lifecycle.states import FINAL, Status
from jobsys.nats.admin import delete_job_stream
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.queries import Q
from jobsys.settings import get_settings

log = logging.getLogger(__name__)


def run_teardown(job_id: int, reason: str = "teardown") -> bool:
    """Delete the stream of `job_id` if the job is final or canceling; True if it was
    there (an event records it). A live job's stream is never touched."""
    names = JobNames.of(get_settings().namespace, job_id)
    with connection() as conn:
        row = conn.execute(Q.job_statuses, {"job_ids": [job_id]}).fetchone()
    if row is None:
        return False
    status = Status(row["status"])
    if status not in FINAL and status != Status.CANCELING:
        log.warning("teardown of an active job ignored", extra={"job_id": job_id, "status": status})
        return False
    deleted = bridge().run(lambda nc, js: delete_job_stream(nc, js, names))
    if deleted:
        with connection() as conn:
            record_event(conn, job_id, "stream_deleted", stream=names.stream, reason=reason)
    return deleted
