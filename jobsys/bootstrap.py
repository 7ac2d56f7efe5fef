"""Bootstrap: queued -> started, then fill the job's stream with its tasks.

Safe to run any number of times, at any moment: a Dramatiq redelivery, the
reconciler's re-enqueue of a stalled or lost bootstrap, a re-run after NATS
lost the stream. The filling is `jobsys.streams.fill_job_stream`, the same
one the reconciler's stream repairs use: it resumes from `published_count`,
republishes every pending task if the stream is not the one they went to,
and never publishes a finished task. One bootstrap (or fill) per job at a
time: the job's bootstrap lock. A cancel that lands at any point wins, and
no stream is left behind for the cancelled job.
"""

from __future__ import annotations

import logging
from typing import Literal

from jobsys.db import connection
from jobsys.events import record_event
from jobsys.locks import job_lock
from jobsys.queries import Q
from jobsys.states import FINALIZABLE, OUTCOME, Status, transition
from jobsys.streams import BOOTSTRAP_LOCK, FillOutcome, fill_job_stream

log = logging.getLogger(__name__)

Outcome = Literal["busy", "unknown", "inactive", "empty", "stopped", "published"]


def run_bootstrap(job_id: int) -> Outcome:
    """Bootstrap `job_id`; safe to call any number of times."""
    with job_lock(BOOTSTRAP_LOCK, job_id) as held:
        if not held:
            log.info("bootstrap already running", extra={"job_id": job_id})
            return "busy"
        return _bootstrap(job_id)


def _bootstrap(job_id: int) -> Outcome:
    with connection() as conn:
        job = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
        if job is None:
            record_event(conn, None, "bootstrap_unknown_job", "warning", job=job_id)
            return "unknown"
        if job["status"] not in FINALIZABLE:
            return "inactive"
        if job["total_count"] == 0:
            transition(conn, job_id, OUTCOME, FINALIZABLE, "job has no tasks")
            return "empty"
        if job["status"] == Status.QUEUED:
            # Started before its stream exists: the fill below publishes only
            # for a started job, and re-checks that around every NATS step, so
            # a cancel landing anywhere from here on stops it.
            transition(conn, job_id, Status.STARTED, {Status.QUEUED}, "bootstrap")
    fill = fill_job_stream(job_id)
    if fill.outcome == FillOutcome.STOPPED:
        return "stopped"
    log.info("bootstrap published", extra={"job_id": job_id, "tasks": job["total_count"],
             "republished": fill.republished, "too_large": fill.too_large})  # fmt: skip
    return "published"
