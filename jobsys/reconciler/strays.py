"""Duty `stray_streams`: delete the streams of final jobs and of jobs the database
does not know (a teardown lost with its message, a database restored from an
older backup).

A job final for less than `stray_grace_s` keeps its stream: its own teardown is
on the way, and a pass that raced it would report every healthy job as a stray.
Each under the job's reconcile lock; a stream its teardown (or another pass)
deleted since the listing is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobsys.lifecycle.states import FINAL
from jobsys.nats.admin import delete_job_stream
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.pg.db import connection
from jobsys.pg.locks import Lock, job_lock
from jobsys.pg.queries import Q
from jobsys.reconciler.duties import PassContext
from jobsys.reconciler.findings import Finding, record_finding
from jobsys.reconciler.kinds import Action, Kind


def delete_stray_streams(ctx: PassContext) -> Mapping[str, Any]:
    """Delete every stray job stream seen at the start of the pass; returns how many."""
    if not ctx.job_streams:
        return {"deleted": 0}
    with connection() as conn:
        job_ids = sorted(set(ctx.job_streams.values()))
        rows = conn.execute(Q.stray_stream_jobs, {"job_ids": job_ids}).fetchall()
    jobs = {r["id"]: r for r in rows}
    grace = ctx.settings.stray_grace_s
    deleted = 0
    for stream, job_id in sorted(ctx.job_streams.items()):
        job = jobs.get(job_id)
        status = job["status"] if job is not None else None
        if job is not None and (status not in FINAL or (job["final_for_s"] or 0.0) < grace):
            continue
        with job_lock(Lock.RECONCILE, job_id, ctx.lock_conn) as held:
            if not held:
                continue
            names = JobNames.of(ctx.settings.namespace, job_id)
            if not bridge().run(lambda nc, js, n=names: delete_job_stream(nc, js, n)):  # type: ignore[misc]
                continue  # its teardown (or another pass) deleted it since the listing
            finding = Finding(
                job_id, Kind.STRAY_STREAM, Action.DELETED,
                {"stream": stream, "job_status": status or "unknown"},
            )  # fmt: skip
            record_finding(ctx.run_id, finding)
            ctx.findings.append(finding)
            deleted += 1
    return {"deleted": deleted}
