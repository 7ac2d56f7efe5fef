"""Why a job cannot move on now, in one line, or None.

Judged from what the workers and processors announce (jobsys.nats.presence):
a queued or canceling job needs a worker; a started job needs a processor
that serves it and a worker to record its results. A processor that refused
the job's pipeline says why (not allowed here, cannot be imported...). The
judging is pure (`blocked_reason`); `why_blocked` reads the members first.
`jobsys status --json` (`blocked`), `watch`, `top` and the reconciler's
`waiting` finding all say it the same way. A started job that could move
but whose every pending task waits for its next delivery after a transient
failure (the processors' retry notes, jobsys.processor.retries) says
WAITING_FOR_RETRY.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from jobsys.display import one_line
from jobsys.lifecycle.states import FINAL, Status
from jobsys.models import JobView
from jobsys.nats.presence import Member, members, now
from jobsys.pg.db import connection
from jobsys.pg.queries import Q

# A waiting caller (`watch`, `Job.wait`) says why a job does not move once it
# has waited this long: a fresh job is picked up within about a second.
BLOCKED_AFTER_S = 3.0
WAITING_FOR_RETRY = "waiting for retry delay"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def blocked_reason(
    job_id: int, status: str, team: list[Member], at: datetime, waits: bool = False
) -> str | None:
    """Why job `job_id` (in `status`) cannot move on, given the announced members;
    WAITING_FOR_RETRY when nothing else stops a started job and `waits` says every
    pending task of it waits for a retry delay (`waits_for_retry`)."""
    if status in FINAL:
        return None
    workers = [m for m in team if m.kind == "worker" and m.alive(at)]
    processors = [m for m in team if m.kind == "processor" and m.alive(at)]
    if status != Status.STARTED:
        return None if workers else "no worker is running"
    if not processors:
        return "no processor or worker is running" if not workers else "no processor is running"
    serving = [p for p in processors if job_id in p.jobs]
    if not serving:
        refusals = [r for p in processors for r in p.refused if r.job_id == job_id]
        if refusals:
            reasons = Counter(r.reason for r in refusals)
            reason, _ = reasons.most_common(1)[0]
            others = len(reasons) - 1
            more = f" (and {others} other reason{'s' if others > 1 else ''})" if others else ""
            return (
                f'pipeline "{refusals[0].pipeline}" refused by '
                f"{_count(len(refusals), 'processor')}: {reason}{more}"
            )
    if not workers:
        return "no worker is running: results are not recorded"
    return WAITING_FOR_RETRY if waits else None


def why_blocked(view: JobView) -> str | None:
    """`blocked_reason` of a job as read now (one look at NATS; a final job costs none)."""
    if view.status in FINAL:
        return None
    try:
        team = members()
    except Exception as exc:
        cause = one_line(exc) or type(exc).__name__
        return f"cannot see workers and processors: NATS not reachable ({cause})"
    reason = blocked_reason(view.job_id, view.status, team, now())
    if reason is None and view.status == Status.STARTED and waits_for_retry(view.job_id):
        return WAITING_FOR_RETRY
    return reason


def waits_for_retry(job_id: int) -> bool:
    """Whether the job has pending tasks and every one waits for a redelivery after a
    transient failure (its next attempt, as a processor noted it, is still to come)."""
    with connection() as conn:
        row = conn.execute(Q.waits_for_retry, {"job_id": job_id}).fetchone()
    return bool(row and row["waits"])
