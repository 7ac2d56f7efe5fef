"""One chaos run: private servers, a running system, jobs submitted, faults, then the checks."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import jobsys
from devtools.process import free_port
from jobsys.lifecycle.states import FINAL
from jobsys.logs import setup_logging
from jobsys.models import JobView
from jobsys.ops.runner import LocalSystem, serve_cmd
from jobsys.pg.migrate import migrate
from jobsys.reconciler import reconcile_pass
from jobsys.server.tokens import create_token
from jobsys.settings import reset_settings
from tests.chaos.check import check
from tests.chaos.faults import Faults
from tests.chaos.hooks import PROBE_EVERY_S, Receivers, submit_probe
from tests.chaos.mix import TINY_PER_JOB, JobPlan, reshare, submit_job, submit_tiny
from tests.chaos.report import Report, print_report
from tests.chaos.servers import PrivateServers

T = TypeVar("T")

# Short timings, so redelivery, recovery and the reconciler's rules all happen
# within a run. ack_wait 5 s: outages are counted in ack_waits (tests.chaos.faults).
HARNESS_ENV = {
    "JOBSYS_ACK_WAIT_S": "5",
    # The job mix runs `fault-echo` (jobsys.testing.faults).
    "JOBSYS_FAULT_PIPELINES": "true",
    "JOBSYS_RETRY_DELAY_S": "0.2",
    # Backoff doubles from 0.2 s; capped low so a task that fails many times
    # in a row (20 deliveries for `plain` jobs) still ends within the run.
    "JOBSYS_RETRY_DELAY_MAX_S": "2",
    "JOBSYS_HEARTBEAT_TIMEOUT_MS": "5000",
    "JOBSYS_MAINTENANCE_CHANCE": "100000",
    "JOBSYS_LOST_AFTER_S": "60",
    "JOBSYS_QUEUED_STALE_S": "10",
    "JOBSYS_CANCEL_GRACE_S": "10",
    # The harness cancels and changes shares while workers are frozen too: a
    # job row a frozen worker holds fails the call (JobBusy) after this long,
    # and the harness tries again on a later tick.
    "JOBSYS_LOCK_WAIT_S": "1",
    # A worker frozen inside a transaction has that session ended by Postgres
    # after this long: well within a `stop_workers` outage, so every outage
    # wakes workers whose transactions were rolled back under them.
    "JOBSYS_IDLE_TRANSACTION_S": "3",
    # A per-job lock whose session idles this long is ended by Postgres:
    # shorter than a `stop_workers` outage, so a worker frozen mid-fill loses
    # its bootstrap lock to a stream repair, and wakes to find it gone.
    "JOBSYS_LOCK_IDLE_S": "20",
    "JOBSYS_STRAY_GRACE_S": "5",
    "JOBSYS_RECONCILE_EVERY_S": "10",
    # A batch Redis lost is sent again after 30 s, then twice as long each
    # time: capped at 2 minutes here (10 by default), so that after the last
    # fault every held result is re-sent well within the settle timeout.
    "JOBSYS_RESULT_RESEND_MAX_S": "120",
    # Hooks to the harness's bad receivers (tests.chaos.hooks): a short
    # deadline and few attempts, so every hook ends within the run.
    "JOBSYS_HOOK_TIMEOUT_S": "3",
    "JOBSYS_HOOK_BACKOFF_S": "1",
    "JOBSYS_HOOK_MAX_ATTEMPTS": "3",
    # A killed remote processor's leases lapse within two ack_waits.
    "JOBSYS_GATEWAY_LEASE_S": "10",
    # The remote processor's calls are not what is tested here.
    "JOBSYS_SERVE_RATE_LIMIT": "100000/second",
}
# What the remote processor's machine lacks (it has only the server's URL and a token).
REMOTE_LACKS = ("JOBSYS_NATS_URL", "JOBSYS_REDIS_URL", "JOBSYS_DATABASE_URL", "JOBSYS_SECRET")
# After the faults, the harness runs a reconcile pass this often (as cron would)
# until every job is final.
SETTLE_RECONCILE_EVERY_S = 5.0
# How far the fault window may stretch (a multiple of --seconds) for a fault
# kind that found nothing to act on, or no room for its outage, in time.
WINDOW_STRETCH_MAX = 2.0


def run(
    seed: int,
    seconds: float,
    jobs: int,
    tasks: int,
    settle_timeout: float,
    keep: bool = False,
    min_each: int = 1,
) -> Report:
    """One chaos run; returns the report (also printed by `main`)."""
    root = Path(tempfile.mkdtemp(prefix="jobsys-chaos-"))
    servers = PrivateServers(root)
    report = Report(seed=seed, seconds=seconds, jobs=jobs, tasks=jobs * tasks)
    servers.start_all()
    os.environ.update(servers.env)
    os.environ.update(
        {**HARNESS_ENV, "JOBSYS_NAMESPACE": f"chaos{seed}", "JOBSYS_SECRET": uuid.uuid4().hex}
    )
    reset_settings()
    migrate()
    system = LocalSystem(workers=2, threads=4, processors=2, concurrency=8, schedulers=1,
                         log_dir=root / "logs").start()  # fmt: skip
    _add_gateway(system)
    receivers = Receivers().__enter__()
    # Two random streams: the job mix is the same for a seed however the faults fall.
    mix_rng = random.Random(f"{seed}:jobs")
    plans: list[JobPlan] = []
    started = time.monotonic()
    ack_wait = float(HARNESS_ENV["JOBSYS_ACK_WAIT_S"])
    faults = Faults(random.Random(f"{seed}:faults"), system, servers, plans, started, ack_wait,
                    ends=started + seconds, want_each=min_each)  # fmt: skip
    try:
        # A third of the jobs at once, the rest spread over the fault window,
        # so jobs are at every stage (bootstrap, running, finishing) when hit.
        submit_at = sorted(
            0.0 if j < max(jobs // 3, 1) else mix_rng.uniform(0, seconds * 0.9) for j in range(jobs)
        )
        print(f"chaos: seed {seed}, {jobs} jobs x {tasks} tasks, {seconds:.0f}s of faults, "
              f"servers in {root}", flush=True)  # fmt: skip
        # During the faults the reconciler runs as deployed: the scheduler
        # subprocess enqueues a pass every 10 s and a worker runs it (and the
        # harness runs passes itself while the workers are stopped).
        next_probe = started + PROBE_EVERY_S
        while True:
            now = time.monotonic()
            if now - started >= seconds:
                # On a loaded machine the faults before an outage can take so
                # long that it no longer fits: the window stretches (once, to
                # a bound) until every kind was injected, rather than end
                # having proved less than it says.
                if not faults.owed() or now - started >= seconds * WINDOW_STRETCH_MAX:
                    break
                faults.ends = started + seconds * WINDOW_STRETCH_MAX
            if faults.pg_up and now >= next_probe:
                next_probe = now + PROBE_EVERY_S
                faults.probes.append(_with_retries(lambda: submit_probe("hooks hanging")))
            if faults.pg_up:
                # Like a user, the harness submits and cancels only while
                # Postgres is up (waiting here would delay its return). A
                # worker frozen inside a result transaction holds its job's
                # row: a cancel or `jobsys set` of that job fails after
                # JOBSYS_LOCK_WAIT_S (JobBusy) and is tried again later.
                _submit_and_cancel(mix_rng, plans, submit_at, now, started, tasks, seconds,
                                   receivers, report)  # fmt: skip
            faults.tick(now)
            time.sleep(0.1)
        faults.end()
        report.seconds = time.monotonic() - started
        # Jobs due during the last stall are submitted now, so every planned job runs.
        _submit_and_cancel(mix_rng, plans, submit_at, float("inf"), started, tasks, seconds,
                           receivers, report)  # fmt: skip

        # Faults stop; everything runs; the reconciler also sweeps from here
        # as cron would, until all is final.
        settle_start = time.monotonic()
        final = _settle(plans, faults, settle_timeout)
        _settle_probes(faults, settle_timeout)
        report.settle_s = time.monotonic() - settle_start
        # Past the grace a final job's teardown has, a pass deletes what it left.
        time.sleep(float(HARNESS_ENV["JOBSYS_STRAY_GRACE_S"]))
        reconcile_pass(trigger="chaos")
        time.sleep(2)
        check(plans, final, faults, report)
    finally:
        faults.end()
        receivers.__exit__()
        system.stop(timeout=20)
        servers.stop_all()
        if report.violations or keep:
            # Keep the evidence: logs, and the data of NATS and Postgres.
            print(f"chaos: logs and server data kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report


def _add_gateway(system: LocalSystem) -> None:
    """`jobsys serve` and one remote processor (for `fault-echo`, beside the native
    ones) that talks only to it: both restarted like the rest when they die."""
    port = free_port()
    system.add_group("serve", serve_cmd(port))
    token, _ = create_token(f"chaos-remote-{uuid.uuid4().hex[:6]}", "process", ["fault-echo"])
    env = {k: v for k, v in os.environ.items() if k not in REMOTE_LACKS}
    env["JOBSYS_TOKEN"] = token
    cmd = [sys.executable, "-m", "jobsys.cli", "process", "--server",
           f"http://127.0.0.1:{port}", "--concurrency", "4"]  # fmt: skip
    system.add_group("remote", cmd, env=env)


def _submit_and_cancel(
    rng: random.Random,
    plans: list[JobPlan],
    submit_at: list[float],
    now: float,
    started: float,
    tasks: int,
    seconds: float,
    receivers: Receivers,
    report: Report,
) -> None:
    while submit_at and now - started >= submit_at[0]:
        submit_at.pop(0)
        # The mix's own turn (profiles, hooks) counts its jobs, not the tiny ones.
        j = sum(1 for plan in plans if plan.profile != "tiny")
        hook = receivers.target_for(j)
        plans.append(_with_retries(partial(submit_job, rng, j, tasks, now, seconds, hook)))
        for _ in range(TINY_PER_JOB):
            plans.append(_with_retries(partial(submit_tiny, rng, len(plans), now)))
    # One held row a tick at most: the faults' loop must go on (resume the
    # frozen workers).
    for plan in plans:
        due = plan.reshare_at is not None and now >= plan.reshare_at
        if due and not _unless_busy(partial(reshare, plan), report, "set"):
            return
    for plan in plans:
        if plan.cancel_at is None or plan.cancelled or now < plan.cancel_at:
            continue
        if not _unless_busy(partial(jobsys.cancel, plan.job_id), report, "cancel"):
            return
        plan.cancelled = True


def _unless_busy(fn: Callable[[], object], report: Report, what: str) -> bool:
    """`fn` (with retries); False if the job's row was held past
    JOBSYS_LOCK_WAIT_S (JobBusy, counted): nothing changed, try again later."""
    try:
        _with_retries(fn, give_up_on=(jobsys.JobBusy,))
    except jobsys.JobBusy:
        report.busy[what] += 1
        return False
    return True


def _with_retries(
    fn: Callable[[], T], attempts: int = 20, give_up_on: tuple[type[Exception], ...] = ()
) -> T:
    for i in range(attempts):
        try:
            return fn()
        except give_up_on:
            raise
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _settle(plans: list[JobPlan], faults: Faults, timeout: float) -> dict[int, JobView]:
    deadline = time.monotonic() + timeout
    views: dict[int, JobView] = {}
    next_reconcile = 0.0
    while time.monotonic() < deadline:
        # The system keeps its Procfile runner: whatever dies is restarted.
        faults.restart_the_dead()
        views = {p.job_id: _with_retries(partial(jobsys.get_job, p.job_id)) for p in plans}
        if all(v.status in FINAL for v in views.values()):
            return views
        if time.monotonic() >= next_reconcile:
            _with_retries(lambda: reconcile_pass(trigger="chaos"))
            next_reconcile = time.monotonic() + SETTLE_RECONCILE_EVERY_S
        time.sleep(0.5)
    return views


def _settle_probes(faults: Faults, timeout: float) -> None:
    """Until every probe job is final (they are small: this is quick)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [_with_retries(partial(jobsys.get_job, p.job_id)) for p in faults.probes]
        if all(v.status in FINAL for v in views):
            return
        time.sleep(0.5)


def main() -> None:
    """`python -m tests.chaos`."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description="jobsys chaos run: faults, then invariants"
    )
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--settle-timeout", type=float, default=240)
    parser.add_argument(
        "--min-each", type=int, default=1,
        help="fail the run unless every fault kind and every kind of special task "
        "was injected at least this many times (make chaos: 3)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep logs and server data")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    setup_logging("text", "WARNING")
    report = run(
        seed, args.seconds, args.jobs, args.tasks, args.settle_timeout, args.keep, args.min_each
    )
    report.require_each(args.min_each)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print_report(report)
    sys.exit(0 if report.ok else 1)
