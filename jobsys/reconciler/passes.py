"""A reconciler pass: look at every active job, act on what is wrong, then run the duties.

1. Read every active job (one SQL query) and NATS's view of the started
   ones (one paged stream listing plus consumer info); `diagnose` each.
2. For each job with findings, take its reconcile lock (skip it if another
   pass holds it), look again under the lock, and hand each finding to its
   handler (`handlers.HANDLERS`); record each finding with its outcome.
   A job whose findings act on nothing (`NO_ACTION`: it waits) is judged
   from the pass's own look, with no lock and no second look, and a finding
   the same as the job's latest (kind, action, reason) is not written again:
   all of those are counted in one statement at the end of the pass, and
   the ones that changed are written in one more. So a pass over 10,000
   waiting jobs costs a look at each and four statements.
3. Run the duties (`DUTIES`) in order: stray streams, history pruning, hook
   resends, ledger retention.
4. Record the pass (`reconcile_runs`) with what it saw and did.

Two passes may run at once (the scheduler's actor and cron): the per-job
lock means one acts and the other skips that job, and each job is re-read
under the lock first, so a pass never acts on what another already fixed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from contextlib import ExitStack
from typing import Any

import psycopg

from jobsys.hooks.resend import resend_due
from jobsys.lifecycle.retention import prune_due
from jobsys.lifecycle.states import Status
from jobsys.pg.db import connect_direct, connection
from jobsys.pg.locks import Lock, job_lock
from jobsys.pg.queries import Q
from jobsys.reconciler.diagnose import diagnose
from jobsys.reconciler.duties import Duty, PassContext
from jobsys.reconciler.findings import (
    Finding,
    Handled,
    PassReport,
    read_latest_findings,
    record_finding,
    record_findings,
    refresh_findings,
)
from jobsys.reconciler.handlers import HANDLERS
from jobsys.reconciler.kinds import DB_ONLY, NO_ACTION, Action, Kind
from jobsys.reconciler.observe import look_at_all, look_at_job, read_active_jobs, read_job
from jobsys.reconciler.prune import prune_history
from jobsys.reconciler.state import NatsView, Seen, TeamLook, Thresholds
from jobsys.reconciler.strays import delete_stray_streams
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Run in this order at the end of every pass, after the per-job work.
DUTIES: list[Duty] = [
    Duty("stray_streams", delete_stray_streams),
    Duty("prune_history", prune_history),
    # Completion hooks whose delivery is due again (a sender died or failed).
    Duty("hooks", lambda ctx: resend_due(ctx.settings).as_dict()),
    # Ledgers of jobs final for longer than JOBSYS_RETAIN_DAYS.
    Duty("retention", lambda ctx: prune_due(ctx.settings).as_dict()),
]


def _reconcile_job(
    job_id: int,
    settings: Settings,
    run_id: int,
    db_only: NatsView | None = None,
    team: TeamLook | None = None,
) -> list[Finding]:
    """Look at one job again (under its lock) and act on every finding.

    `db_only`: the pass's NATS view of a job whose findings all come from
    the database; it is recorded as seen, not looked at again, and no
    NATS-based finding is acted on from it (it may be a second old).
    """
    job = read_job(job_id)
    if job is None:
        return []  # final since the pass started
    nats = db_only
    if job.status == Status.STARTED and db_only is None:
        nats = look_at_job(settings.namespace, job_id)
    kinds = diagnose(job, nats, Thresholds.of(settings))
    if db_only is not None:
        kinds = [k for k in kinds if k in DB_ONLY]
    seen = Seen(job, nats, settings, team or TeamLook())
    saw = job.saw(nats)
    findings: list[Finding] = []
    for kind in kinds:
        try:
            outcome = HANDLERS[kind](seen)
        except Exception as exc:
            log.warning("reconcile action failed", extra={"job_id": job_id, "kind": str(kind),
                                                          "error": repr(exc)})  # fmt: skip
            outcome = Handled(Action.ERROR, {"error": repr(exc)})
        finding = Finding(job_id, kind, outcome.action, {"saw": saw, **outcome.as_detail()})
        record_finding(run_id, finding)
        findings.append(finding)
        if outcome.ends_job:
            break  # the job is final: what else was seen no longer applies
    return findings


def _note_unacted(
    seen: Seen, kinds: list[Kind], latest: dict[tuple[int, str], Any],
    unchanged: list[int], changed: list[Finding],
) -> list[Finding]:  # fmt: skip
    """Findings that act on nothing, judged from the pass's look. One that differs
    from the job's latest goes to `changed` (written at the end of the pass, all in
    one statement); otherwise its row's id goes to `unchanged`."""
    findings: list[Finding] = []
    for kind in kinds:
        outcome = HANDLERS[kind](seen)
        finding = Finding(seen.job_id, kind, outcome.action,
                          {"saw": seen.job.saw(seen.nats), **outcome.as_detail()})  # fmt: skip
        prior = latest.get((seen.job_id, str(kind)))
        if (
            prior is not None
            and prior["action"] == str(finding.action)
            and prior["reason"] == finding.reason
        ):
            unchanged.append(prior["id"])
        else:
            changed.append(finding)
        findings.append(finding)
    return findings


def _run_duties(ctx: PassContext) -> dict[str, Any]:
    done: dict[str, Any] = {}
    for duty in DUTIES:
        try:
            done[duty.name] = dict(duty.run(ctx))
        except Exception as exc:
            # One duty's trouble must not stop the others, nor the pass's record.
            log.warning("reconcile duty failed", extra={"duty": duty.name, "error": repr(exc)})
            done[duty.name] = {"error": repr(exc)}
    return done


def reconcile_pass(settings: Settings | None = None, trigger: str = "cli") -> PassReport:
    """Run one pass over every active job and the namespace's streams; record it."""
    s = settings or get_settings()
    with connection() as conn:
        run = conn.execute(Q.insert_reconcile_run, {"trigger": trigger}).fetchone()
    assert run is not None
    run_id: int = run["id"]
    jobs = read_active_jobs()
    started = [j.id for j in jobs if j.status == Status.STARTED]
    views, job_streams = look_at_all(s.namespace, started)
    limits = Thresholds.of(s)
    report = PassReport(run_id=run_id, jobs_checked=len(jobs), findings=[])
    team = TeamLook()
    latest = read_latest_findings([j.id for j in jobs])
    unchanged: list[int] = []
    changed: list[Finding] = []
    # One connection holds this pass's per-job session locks, taken and
    # released job by job (a job's actions span several transactions and
    # NATS calls, so a transaction-scoped lock would not cover them).
    with ExitStack() as stack:
        lock_conn = stack.enter_context(connect_direct())
        for job in jobs:
            nats = views.get(job.id)
            kinds = diagnose(job, nats, limits)
            if not kinds:
                continue
            if nats is not None and NO_ACTION.issuperset(kinds):
                seen = Seen(job, nats, s, team)
                report.findings += _note_unacted(seen, kinds, latest, unchanged, changed)
                continue
            db_only = nats if nats is not None and DB_ONLY.issuperset(kinds) else None
            if lock_conn.closed:
                # Postgres ended it with a job's lock held past
                # JOBSYS_LOCK_IDLE_S (this pass was stopped): a new one.
                lock_conn = stack.enter_context(connect_direct())
            try:
                with job_lock(Lock.RECONCILE, job.id, lock_conn) as held:
                    if not held:
                        report.skipped_busy += 1
                        log.info("job busy in another reconcile pass", extra={"job_id": job.id})
                        continue
                    try:
                        report.findings += _reconcile_job(job.id, s, run_id, db_only, team)
                    except Exception as exc:
                        # One job's trouble (e.g. NATS timing out) must not stop the pass.
                        log.warning("reconcile of a job failed",
                                    extra={"job_id": job.id, "error": repr(exc)})  # fmt: skip
                        finding = Finding(job.id, Kind.ERROR, Action.NONE, {"error": repr(exc)})
                        record_finding(run_id, finding)
                        report.findings.append(finding)
            except psycopg.Error as exc:
                if not lock_conn.closed:
                    raise
                # The job's lock went with its session: what was done holds
                # (each action is its own transaction), the next pass looks again.
                log.warning("reconcile lock of a job lost",
                            extra={"job_id": job.id, "error": repr(exc)})  # fmt: skip
        record_findings(run_id, changed)
        refresh_findings(run_id, unchanged)
        if lock_conn.closed:
            lock_conn = stack.enter_context(connect_direct())
        ctx = PassContext(run_id, s, lock_conn, job_streams)
        duties = _run_duties(ctx)
        report.findings += ctx.findings
    detail = {
        "active_by_status": dict(Counter(str(j.status) for j in jobs)),
        "job_streams": len(job_streams),
        "actions": dict(Counter(str(f.action) for f in report.findings)),
        "skipped_busy": report.skipped_busy,
        "duties": duties,
    }
    with connection() as conn:
        conn.execute(
            Q.finish_reconcile_run,
            {
                "run_id": run_id,
                "jobs_checked": report.jobs_checked,
                "findings": len(report.findings),
                "detail": json.dumps(detail, default=str),
            },
        )
    log.info("reconcile pass", extra={"run_id": run_id, "jobs_checked": report.jobs_checked,
                                      "findings": len(report.findings)})  # fmt: skip
    return report
