"""The invariants, checked over the history once every job is final.

For every job:
- it is final, and its status history holds one final status, never left;
- counters equal the ledger's counts, done + failed + lost + cancelled = total,
  nothing pending; no stream is left after a reconcile pass;
- every `failed` task has a reason (a non-empty error);
- a task ends `lost` only if NATS delivered it max_deliver times (the ledger
  records the MAX_DELIVERIES advisory's count), and only if processors (native
  or remote, or the gateway holding a remote one's leases) died
  (or NATS restarted, losing a delivery in flight) during its job often
  enough to cut every one of those deliveries: a task
  whose pipeline returns at once (plain, fail, odd values) needs max_deliver
  deaths, one that uses up deliveries by itself (transient, poison, hung)
  needs one. Otherwise its pipeline returned a result and it was lost anyway.

For every job with a hook on a bad receiver (tests.chaos.hooks): its
delivery is in the outbox; a receiver that answers 200 (then trickles, or
sends a huge body) got it; each attempt on one that never finishes its
headers ended at its deadline; a huge error answer is kept as a short excerpt.
No worker's peak RSS passes WORKER_PEAK_RSS_MB. Every probe job started
within PROBE_START_S of the moment it could (its submit, or the end of the
outage it was submitted into).

For every job nobody cancelled, every task ends as its payload asked
(`tests.chaos.mix.judge`): done; failed with the right reason (NaN or
Infinity: not storable as JSON; NUL: stored escaped; a long error: cut;
poison: gave up naming the death; hung: gave up, timed out); or lost as above.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

from jobsys.lifecycle.states import FINAL
from jobsys.models import JobView
from jobsys.nats.admin import stream_exists
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.pg.db import connection
from jobsys.settings import get_settings
from tests.chaos.faults import Faults
from tests.chaos.hooks import WORKER_PEAK_RSS_MB, check_hooks, check_probes
from tests.chaos.mix import MIX_KINDS, RETURNS_AT_ONCE, SMALL_MAX_DELIVER, JobPlan, judge
from tests.chaos.report import Report

# The kinds of process whose death cuts the deliveries they hold.
DELIVERY_HOLDERS = ("processor", "remote", "serve")
# Violations named per job at most (the first ones say enough).
MAX_PER_JOB = 5
# Slack between the harness's clock readings and Postgres's timestamps.
CLOCK_SLACK_S = 1.0


def check(plans: list[JobPlan], views: dict[int, JobView], faults: Faults, report: Report) -> None:
    """Check every invariant; fill `report` (violations and figures)."""
    report.faults.update(faults.counts)
    report.fault_figures = {k: dict(v) for k, v in faults.figures.items()}
    # A remote processor's death, and the gateway's (it holds the remote
    # processor's leased messages), cut deliveries as a processor's does.
    processor_deaths = [d.at for d in faults.deaths if d.kind in DELIVERY_HOLDERS]
    report.processor_deaths = len(processor_deaths)
    report.remote_leased, report.remote_reported = _remote_work()
    # What can cut a delivery: a processor's death, and a NATS restart.
    deaths = processor_deaths + faults.nats_restarts
    report.exits_on_their_own.update(d.kind for d in faults.deaths if not d.ours)
    report.small_max_deliver_jobs = sum(1 for p in plans if p.max_deliver <= SMALL_MAX_DELIVER)
    ns = get_settings().namespace
    for plan in plans:
        for kind, n in plan.kinds.items():
            report.mix[kind] += n
        report.shares[f"priority {plan.priority}"] += 1
        report.shares[f"weight {plan.weight}"] += 1
        report.shares["changed by set"] += plan.reshared
        view = views[plan.job_id]
        report.finals[view.status] += 1
        if view.status not in FINAL:
            report.violations.append(f"job {plan.job_id} not final: {view.status}")
            continue
        found = _check_job(plan, view, deaths, report)
        names = JobNames.of(ns, plan.job_id)
        if bridge().run(partial(_stream_exists, names)):
            found.append(f"job {plan.job_id}: stream left after final")
        report.violations += found[:MAX_PER_JOB]
    hooks = {p.job_id: p.hook for p in plans if p.hook and views[p.job_id].status in FINAL}
    found, report.hooks = check_hooks(hooks)
    report.violations += found
    found, report.probe_longest_wait_s = check_probes(faults.probes, faults.outages)
    report.probes = len(faults.probes)
    report.violations += found
    report.worker_peak_rss_mb = round(faults.peak_worker_rss_mb)
    if faults.peak_worker_rss_mb > WORKER_PEAK_RSS_MB:
        report.violations.append(f"a worker's peak RSS reached {faults.peak_worker_rss_mb:.0f} MB "
                                 f"(bound {WORKER_PEAK_RSS_MB} MB)")  # fmt: skip
    with connection() as conn:
        for r in conn.execute(
            "SELECT trigger, count(*) AS n FROM reconcile_runs GROUP BY trigger"
        ).fetchall():
            if r["trigger"] == "actor":
                report.passes = int(r["n"])
            elif r["trigger"] == "chaos":
                report.harness_passes = int(r["n"])
        # A finding seen on many passes is one row with a count (`seen`).
        for r in conn.execute(
            "SELECT kind, action, sum(seen) AS n FROM reconcile_findings GROUP BY kind, action"
        ).fetchall():
            report.findings[f"{r['kind']} -> {r['action']}"] = int(r["n"])


async def _stream_exists(names: JobNames, nc: Any, js: Any) -> bool:
    return await stream_exists(js, names)


def _deaths_during(deaths: list[float], view: JobView) -> int:
    start = view.created_at.timestamp() - CLOCK_SLACK_S
    end = (view.finished_at.timestamp() if view.finished_at else float("inf")) + CLOCK_SLACK_S
    return sum(1 for at in deaths if start <= at <= end)


def _job_rows(job_id: int) -> tuple[dict[str, int], list[dict[str, Any]], list[str]]:
    with connection() as conn:
        ledger = {
            r["status"]: int(r["n"])
            for r in conn.execute(
                "SELECT status, count(*) AS n FROM job_tasks WHERE job_id = %s GROUP BY status",
                (job_id,),
            ).fetchall()
        }
        tasks = conn.execute(
            "SELECT task_no, status, error, deliveries FROM job_tasks WHERE job_id = %s",
            (job_id,),
        ).fetchall()
        history = [r["to"] for r in conn.execute(
            "SELECT detail->>'to' AS to FROM job_events WHERE job_id = %s "
            "AND event = 'status' ORDER BY id", (job_id,)).fetchall()]  # fmt: skip
    return ledger, [dict(t) for t in tasks], history


def _remote_work() -> tuple[int, int]:
    """Tasks leased, and outcomes accepted, through the task gateway (its events)."""
    with connection() as conn:
        row = conn.execute(
            "SELECT coalesce(sum((detail->>'count')::int) FILTER (WHERE event = 'tasks_leased'), 0)"
            " AS leased, coalesce(sum((detail->>'accepted')::int)"
            " FILTER (WHERE event = 'results_reported'), 0) AS reported"
            " FROM job_events WHERE event IN ('tasks_leased', 'results_reported')"
        ).fetchone()
    return (int(row["leased"]), int(row["reported"])) if row else (0, 0)


def _check_job(plan: JobPlan, view: JobView, deaths: list[float], report: Report) -> list[str]:
    job = plan.job_id
    found: list[str] = []
    ledger, tasks, history = _job_rows(job)
    counted = {"done": view.done, "failed": view.failed, "lost": view.lost,
               "cancelled": view.cancelled}  # fmt: skip
    for key, n in counted.items():
        if n != ledger.get(key, 0):
            found.append(f"job {job}: {key} counter {n} != ledger {ledger.get(key, 0)}")
        report.duplicated += max(n - ledger.get(key, 0), 0)
    if sum(counted.values()) != view.total or ledger.get("pending", 0):
        found.append(f"job {job}: counts do not add up to total")
    if (view.priority, view.weight) != (plan.priority, plan.weight):
        found.append(f"job {job}: share {(view.priority, view.weight)} != asked "
                     f"{(plan.priority, plan.weight)}")  # fmt: skip
    report.lost += view.lost
    finals_seen = [s for s in history if s in FINAL]
    if len(finals_seen) != 1 or history[-1] != finals_seen[0]:
        found.append(f"job {job}: status history {history}")

    died = _deaths_during(deaths, view)
    md = plan.max_deliver
    for t in tasks:
        task, status, error, deliveries = t["task_no"], t["status"], t["error"], t["deliveries"]
        kind = plan.kind_of(task)
        where = f"job {job} ({plan.profile}) task {task} ({kind})"
        if status == "failed" and not error:
            found.append(f"{where}: failed without a reason")
        if status == "lost":
            need = md if kind in RETURNS_AT_ONCE else 1
            if deliveries < md:
                found.append(f"{where}: lost after {deliveries} deliveries (max_deliver {md})")
            elif died < need:
                why = (
                    "its pipeline returned a result on a delivery no death cut"
                    if kind in RETURNS_AT_ONCE
                    else "no death cut its last delivery"
                )
                found.append(
                    f"{where}: lost after {deliveries} deliveries with {died} processor "
                    f"death(s) or NATS restart(s) during its job: {why} ({error!r})"
                )
            else:
                report.lost_after_processor_deaths += 1
        if kind == "plain" and deliveries > 1 + died:
            report.plain_runs_unexplained += 1
        if plan.cancelled:
            continue
        if status == "lost":
            outcome = "lost"
        elif judge(plan, kind, status, error, deliveries):
            outcome = "as asked"
        else:
            outcome = f"wrongly {status}"
            found.append(
                f"{where}: ended {status} (deliveries {deliveries}, error {str(error)[:200]!r})"
            )
        if kind in MIX_KINDS or kind in ("fail", "give_up", "transient"):
            report.outcomes.setdefault(kind, Counter())[outcome] += 1
    report.redelivered += sum(1 for t in tasks if t["deliveries"] > 1)
    report.max_deliveries = max([report.max_deliveries, *(t["deliveries"] for t in tasks)])
    plain = [t["deliveries"] for t in tasks if plan.kind_of(t["task_no"]) == "plain"]
    report.max_deliveries_plain = max([report.max_deliveries_plain, *plain])
    return found
