"""Bootstrap: queued -> started, then fill the job's stream with its tasks.

Safe to run any number of times, at any moment: a Dramatiq redelivery, the
reconciler's re-enqueue of a stalled or lost bootstrap, a re-run after NATS
lost the stream. The filling is `jobsys.bootstrap.fill.fill_job_stream`, the same
one the reconciler's stream repairs use: it resumes from `published_count`,
republishes every pending task if the stream is not the one they went to,
and never publishes a finished task. One bootstrap (or fill) per job at a
time: the job's bootstrap lock. A cancel that lands at any point wins, and
no stream is left behind for the cancelled job.
"""

from __future__ import annotations

import logging
from typing import Literal

from jobsys.bootstrap.fill import FillEnd, fill_job_stream
from jobsys.lifecycle.finalize import finishing
from jobsys.lifecycle.states import FINALIZABLE, Status, transition
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.locks import Lock, job_lock
from jobsys.pg.queries import Q

log = logging.getLogger(__name__)

BootstrapResult = Literal["busy", "unknown", "inactive", "empty", "stopped", "published"]


def run_bootstrap(job_id: int) -> BootstrapResult:
    """Bootstrap `job_id`; safe to call any number of times."""
    with job_lock(Lock.BOOTSTRAP, job_id) as held:
        if not held:
            log.info("bootstrap already running", extra={"job_id": job_id})
            return "busy"
        return _bootstrap(job_id)


def _bootstrap(job_id: int) -> BootstrapResult:
    with connection() as conn:
        job = conn.execute(Q.job_stream_state, {"job_id": job_id}).fetchone()
        if job is None:
            record_event(conn, None, "bootstrap_unknown_job", "warning", job=job_id)
            return "unknown"
        if job["status"] not in FINALIZABLE:
            return "inactive"
        if job["total_count"] == 0:
            with finishing(conn) as fin:
                fin.finish(job_id, "job has no tasks")
            return "empty"
        if job["status"] == Status.QUEUED:
            # Started before its stream exists: the fill below publishes only
            # for a started job, and re-checks that around every NATS step, so
            # a cancel landing anywhere from here on stops it.
            if transition(conn, job_id, Status.STARTED, {Status.QUEUED}, "bootstrap") is None:
                return "stopped"  # cancelled since it was read
            job = {**job, "status": Status.STARTED}
    # The row just read is what the fill needs (under the bootstrap lock only a
    # fill changes its publishing columns), so the fill does not read it again.
    fill = fill_job_stream(job_id, job=job)
    if fill.end == FillEnd.STOPPED:
        return "stopped"
    log.info("bootstrap published", extra={"job_id": job_id, "tasks": job["total_count"],
             "republished": fill.republished, "too_large": fill.too_large})  # fmt: skip
    return "published"
