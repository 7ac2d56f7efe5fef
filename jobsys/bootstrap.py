"""Bootstrap: queued -> started, create the job's stream, publish its tasks.

Resumable: publishing starts from `published_count`, and each message's
Nats-Msg-Id makes a re-published chunk a no-op inside the duplicate window.
One bootstrap per job at a time (advisory lock). A cancel that lands while
publishing stops it, and bootstrap never re-creates a stream teardown deleted.
"""

from __future__ import annotations

import logging
from typing import Literal

from jobsys.db import connect_direct, connection
from jobsys.events import record_event
from jobsys.locks import lock_name, try_lock, unlock
from jobsys.queries import Q
from jobsys.queue import JobNames, bridge, delete_job_stream, ensure_job_stream, publish_tasks
from jobsys.settings import get_settings
from jobsys.states import FINALIZABLE, OUTCOME, Status, transition

log = logging.getLogger(__name__)

# Tasks read from Postgres per round; the job's status is re-checked between rounds.
PUBLISH_CHUNK = 5_000

Outcome = Literal["busy", "unknown", "inactive", "empty", "stopped", "published"]


def _status(job_id: int) -> Status | None:
    with connection() as conn:
        row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    return Status(row["status"]) if row else None


def run_bootstrap(job_id: int) -> Outcome:
    """Bootstrap `job_id`; safe to call any number of times."""
    name = lock_name("bootstrap", job_id)
    with connect_direct(autocommit=True) as lock_conn:
        if not try_lock(lock_conn, name):
            log.info("bootstrap already running", extra={"job_id": job_id})
            return "busy"
        try:
            return _bootstrap(job_id)
        finally:
            unlock(lock_conn, name)


def _bootstrap(job_id: int) -> Outcome:
    settings = get_settings()
    names = JobNames.of(settings.namespace, job_id)
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

    # Re-read just before creating the stream: a cancel that already tore the
    # job down must not find a fresh stream behind it (the check after
    # creating closes the remaining window).
    if _status(job_id) not in FINALIZABLE:
        return "inactive"
    try:
        bridge().run(
            lambda nc, js: ensure_job_stream(
                js, names, job["pipeline"], job["max_deliver"], settings
            )
        )
    except Exception:
        # A cancel's teardown can delete the stream between its creation and
        # the consumer's ("stream not found"): that is a stop, not an error.
        if _status(job_id) in FINALIZABLE:
            raise
        bridge().run(lambda nc, js: delete_job_stream(js, names))
        return "stopped"
    with connection() as conn:
        if job["status"] == Status.QUEUED:
            transition(conn, job_id, Status.STARTED, {Status.QUEUED}, "bootstrap")
    # Whatever happened meanwhile, the status now decides: a job cancelled
    # while we created its stream must not keep a stream teardown missed.
    if _status(job_id) != Status.STARTED:
        bridge().run(lambda nc, js: delete_job_stream(js, names))
        return "stopped"

    published = job["published_count"]
    total = job["total_count"]
    while published < total:
        with connection() as conn:
            rows = conn.execute(
                Q.tasks_to_publish,
                {"job_id": job_id, "from_task": published, "limit": PUBLISH_CHUNK},
            ).fetchall()
        if not rows:
            break
        chunk = [(r["task_no"], r["payload"]) for r in rows]
        try:
            bridge().run(
                lambda nc, js, chunk=chunk: publish_tasks(js, names, job_id, chunk),  # type: ignore[misc]
                timeout=120,
            )
        except Exception as exc:
            # Teardown deleted the stream under us (cancel): publishes then
            # fail (no responders, or a timeout). Stop; never re-create it.
            if _status(job_id) != Status.STARTED:
                log.info(
                    "bootstrap stopped: stream gone after cancel",
                    extra={"job_id": job_id, "error": type(exc).__name__},
                )
                return "stopped"
            raise
        published = chunk[-1][0] + 1
        with connection() as conn:
            row = conn.execute(
                Q.advance_published, {"job_id": job_id, "published": published}
            ).fetchone()
        if row is None or row["status"] != Status.STARTED:
            log.info("bootstrap stopped: job no longer started", extra={"job_id": job_id})
            return "stopped"
    log.info("bootstrap published", extra={"job_id": job_id, "tasks": total})
    return "published"
