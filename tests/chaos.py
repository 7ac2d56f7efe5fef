"""The chaos suite: real faults while real jobs run, then invariants over the history.

Run ``python -m tests.chaos --seconds 600 --seed 7`` (``make chaos``), or the
short version inside ``make test`` (tests/test_chaos.py). It starts its OWN
NATS, Redis and Postgres on free ports (so restarting them disturbs nobody),
runs workers, processors and the reconcile scheduler as subprocesses (each
restarted when it dies, as a Procfile runner would), submits a mix of jobs, injects
faults at random moments from a printed seed, then checks:

- every job reached a final state within a bound after the faults stopped;
- counters equal the ledger's counts, and done + failed + lost + cancelled = total;
- no result lost: in a job nobody cancelled, every task ends exactly as its
  payload says (failed when asked to fail, done otherwise), none lost;
- no final job changed status afterwards (status history in job_events);
- no stream left for a final job after a reconcile pass.

Faults: SIGKILL of a worker or a processor, NATS restart (JetStream data
kept), FLUSHDB of Redis, Redis restart (no persistence), Postgres crash-restart,
a Postgres outage of several ack_waits (`stall_postgres`), and duplicated
result batches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAULTS = (
    "kill_worker",
    "kill_processor",
    "restart_nats",
    "flush_redis",
    "restart_redis",
    "restart_postgres",
    "duplicate_results",
    "stall_postgres",
)
MAX_DELIVER = 20
PG_FAULTS = {"restart_postgres", "stall_postgres"}
# A Postgres outage this many ack_waits long: results cannot be recorded for
# that long, so without holding them every waiting task would be redelivered.
STALL_ACK_WAITS = 3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin_dir() -> Path:
    from jobsys.services import SPECS, ensure_local_binary

    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    return ensure_local_binary(SPECS["postgres"], lambda _m: None).parent


def _binary(key: str, machine: Path) -> Path:
    from jobsys.services import SPECS, ensure_local_binary

    return machine if machine.exists() else ensure_local_binary(SPECS[key], lambda _m: None)


class PrivateServers:
    """NATS, Redis and Postgres of this chaos run only, on free ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats_port, self.redis_port, self.pg_port = _free_port(), _free_port(), _free_port()
        self.nats_bin = _binary("nats", Path("/usr/sbin/nats-server"))
        self.redis_bin = _binary("redis", Path("/usr/bin/redis-server"))
        self.pg_entry: dict[str, Any] | None = None
        self.nats: subprocess.Popen[bytes] | None = None
        self.redis: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "JOBSYS_NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
            "JOBSYS_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "JOBSYS_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{self.pg_port}/jobsys",
        }

    def _wait(self, key: str, url: str) -> None:
        from jobsys.services import wait_until_up

        error = wait_until_up(key, url)
        if error:
            raise RuntimeError(f"chaos: private {key} did not come up: {error}")

    def start_nats(self) -> None:
        store = self.root / "nats"
        store.mkdir(exist_ok=True)
        cmd = [str(self.nats_bin), "-a", "127.0.0.1", "-p", str(self.nats_port), "-js",
               "-sd", str(store)]  # fmt: skip
        log = (self.root / "nats.log").open("ab")
        self.nats = subprocess.Popen(cmd, stdout=log, stderr=log)
        self._wait("nats", self.env["JOBSYS_NATS_URL"])

    def start_redis(self) -> None:
        cmd = [str(self.redis_bin), "--bind", "127.0.0.1", "--port", str(self.redis_port),
               "--save", "", "--appendonly", "no", "--dir", str(self.root)]  # fmt: skip
        log = (self.root / "redis.log").open("ab")
        self.redis = subprocess.Popen(cmd, stdout=log, stderr=log)
        self._wait("redis", self.env["JOBSYS_REDIS_URL"])

    def start_postgres(self) -> None:
        from jobsys.services import start_local_postgres

        pgdata = self.root / "pg"
        pgdata.mkdir(exist_ok=True)
        url = f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"
        self.pg_entry = start_local_postgres(_pg_bin_dir(), pgdata, self.pg_port, url)

    def stop_postgres(self, mode: str = "immediate") -> None:
        from jobsys.services import run_pg

        assert self.pg_entry is not None
        import pwd

        user = pwd.getpwnam(self.pg_entry["run_as"]) if self.pg_entry.get("run_as") else None
        pg_ctl = str(Path(self.pg_entry["bin_dir"]) / "pg_ctl")
        run_pg(user, [pg_ctl, "-D", self.pg_entry["pgdata"], "-m", mode, "-w", "stop"])

    def start_all(self) -> None:
        self.start_nats()
        self.start_redis()
        self.start_postgres()
        import psycopg

        with psycopg.connect(self.env["JOBSYS_DATABASE_URL"].replace("/jobsys", "/postgres"),
                             autocommit=True) as conn:  # fmt: skip
            conn.execute("CREATE DATABASE jobsys")

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def restart_nats(self) -> None:
        # SIGTERM: JetStream keeps its data on disk across the restart.
        self._kill(self.nats, signal.SIGTERM)
        self.start_nats()

    def stop_redis(self) -> None:
        self._kill(self.redis)

    def restart_redis(self) -> None:
        self._kill(self.redis)  # no persistence: every queued Dramatiq message is gone
        self.start_redis()

    def restart_postgres(self) -> None:
        self.stop_postgres("immediate")  # a crash, as far as Postgres can tell
        self.start_postgres()

    def stop_all(self) -> None:
        self._kill(self.nats, signal.SIGTERM)
        self._kill(self.redis)
        if self.pg_entry is not None:
            self.stop_postgres("fast")


@dataclass
class JobPlan:
    """A submitted job and what its tasks were asked to do."""

    job_id: int
    total: int
    fails: set[int]
    cancel_at: float | None
    cancelled: bool = False
    transient: set[int] = field(default_factory=set)


@dataclass
class Report:
    """What happened and whether every invariant held."""

    seed: int
    seconds: float
    jobs: int = 0
    tasks: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    finals: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicated: int = 0
    settle_s: float = 0.0
    passes: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    redelivered: int = 0
    max_deliveries: int = 0
    # Of tasks that neither fail nor raise transient errors: every delivery
    # past the first was caused by a fault.
    max_deliveries_plain: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "jobs": self.jobs,
            "tasks": self.tasks,
            "faults": dict(self.faults),
            "finals": dict(self.finals),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "settle_s": round(self.settle_s, 1),
            "scheduler_passes": self.passes,
            "findings": dict(self.findings),
            "tasks_run_again": self.redelivered,
            "max_deliveries": self.max_deliveries,
            "max_deliveries_plain": self.max_deliveries_plain,
            "violations": self.violations,
            "ok": not self.violations,
        }


def _payloads(rng: random.Random, n: int, fail_p: float) -> tuple[list[str], set[int], set[int]]:
    fails = {i for i in range(n) if rng.random() < fail_p}
    transient: set[int] = set()
    lines = []
    for i in range(n):
        item: dict[str, Any] = {"n": i, "sleep_ms": rng.choice([0, 1, 2, 5])}
        if i in fails:
            item["fail"] = True
        elif rng.random() < 0.05:
            item["transient_p"] = 0.5
            transient.add(i)
        lines.append(json.dumps(item))
    return lines, fails, transient


def _submit(rng: random.Random, j: int, tasks: int, now: float, seconds: float) -> JobPlan:
    import jobsys

    lines, fails, transient = _payloads(rng, tasks, rng.choice([0.0, 0.02, 0.1]))
    view = jobsys.submit(
        "echo", iter(lines), name=f"chaos {j}", failure_threshold=0.5, max_deliver=MAX_DELIVER
    )
    cancel_at = now + rng.uniform(0.5, seconds * 0.3) if rng.random() < 0.2 else None
    return JobPlan(view.job_id, tasks, fails, cancel_at, transient=transient)


def _duplicate_results(rng: random.Random) -> int:
    """Enqueue copies of result batches waiting in the Dramatiq queue."""
    import dramatiq

    from jobsys.broker import RESULTS_QUEUE
    from jobsys.settings import get_settings

    broker = dramatiq.get_broker()
    client = broker.client  # type: ignore[attr-defined]
    key = f"{get_settings().dramatiq_namespace}:{RESULTS_QUEUE}.msgs"
    raw = list(client.hvals(key))
    copies = 0
    for data in rng.sample(raw, min(len(raw), 5)):
        msg = dramatiq.Message.decode(data)
        for _ in range(rng.choice([1, 2])):
            broker.enqueue(msg.copy(message_id=str(uuid.uuid4()), options={}))
            copies += 1
    return copies


def _reconcile_once() -> None:
    """One reconciler pass, as cron would run it."""
    from jobsys.reconciler import reconcile_pass

    reconcile_pass(trigger="chaos")


def run(
    seed: int, seconds: float, jobs: int, tasks: int, settle_timeout: float, keep: bool = False
) -> Report:
    """One chaos run; returns the report (also printed by `main`)."""
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="jobsys-chaos-"))
    servers = PrivateServers(root)
    report = Report(seed=seed, seconds=seconds)
    servers.start_all()
    os.environ.update(servers.env)
    os.environ.update(
        {
            "JOBSYS_NAMESPACE": f"chaos{seed}",
            "JOBSYS_ACK_WAIT_S": "5",
            "JOBSYS_NAK_DELAY_S": "0.2",
            "JOBSYS_HEARTBEAT_TIMEOUT_MS": "5000",
            "JOBSYS_MAINTENANCE_CHANCE": "100000",
            "JOBSYS_LOST_AFTER_S": "60",
            "JOBSYS_QUEUED_STALE_S": "10",
            "JOBSYS_CANCEL_GRACE_S": "10",
            "JOBSYS_RECONCILE_EVERY_S": "10",
        }
    )
    from jobsys.settings import reset_settings

    reset_settings()
    from jobsys.db import close_pool
    from jobsys.migrate import migrate
    from jobsys.runner import LocalSystem

    migrate()
    system = LocalSystem(workers=2, threads=4, processors=2, concurrency=8, schedulers=1,
                         log_dir=root / "logs").start()  # fmt: skip
    plans: list[JobPlan] = []
    try:
        started = time.monotonic()
        # A third of the jobs at once, the rest spread over the fault window,
        # so jobs are at every stage (bootstrap, running, finishing) when hit.
        submit_at = sorted(
            0.0 if j < max(jobs // 3, 1) else rng.uniform(0, seconds * 0.9) for j in range(jobs)
        )
        report.jobs, report.tasks = jobs, jobs * tasks
        print(f"chaos: seed {seed}, {jobs} jobs x {tasks} tasks, {seconds:.0f}s of faults, "
              f"servers in {root}", flush=True)  # fmt: skip

        next_fault = time.monotonic() + rng.uniform(1, 4)
        ack_wait = float(os.environ["JOBSYS_ACK_WAIT_S"])
        pg_back_at: float | None = None
        # During the faults the reconciler runs only as deployed: the
        # scheduler subprocess enqueues a pass every 10 s and a worker runs it.
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            if pg_back_at is not None and now >= pg_back_at:
                servers.start_postgres()
                close_pool()
                pg_back_at = None
            if pg_back_at is None:
                # Like a user, the harness submits and cancels only while
                # Postgres is up (waiting here would delay its return).
                _submit_and_cancel(rng, plans, submit_at, now, started, tasks, seconds)
            if now >= next_fault:
                # Every kind once first, in order; then at random.
                injected = sum(report.faults.values())
                fault = FAULTS[injected] if injected < len(FAULTS) else rng.choice(FAULTS)
                if pg_back_at is not None and fault in PG_FAULTS:
                    fault = rng.choice([f for f in FAULTS if f not in PG_FAULTS])
                if fault == "stall_postgres":
                    servers.stop_postgres("immediate")
                    close_pool()
                    pg_back_at = now + STALL_ACK_WAITS * ack_wait
                else:
                    _inject(fault, rng, system, servers)
                report.faults[fault] += 1
                print(f"chaos: t={now - started:5.1f}s {fault}", flush=True)
                next_fault = now + rng.uniform(1.5, 6)
            # Whatever died (killed above) is restarted, as a Procfile runner would.
            for _, procs, start in system.groups():
                for p in list(procs):
                    if p.poll() is not None:
                        procs.remove(p)
                        start()
            time.sleep(0.1)
        if pg_back_at is not None:
            servers.start_postgres()
            close_pool()
        # Jobs due during the last stall are submitted now, so every planned job runs.
        _submit_and_cancel(rng, plans, submit_at, float("inf"), started, tasks, seconds)

        # Faults stop; everything runs; the reconciler also sweeps from here
        # as cron would, until all is final.
        settle_start = time.monotonic()
        final = _settle(plans, settle_timeout)
        report.settle_s = time.monotonic() - settle_start
        _reconcile_once()
        time.sleep(2)
        _check(plans, final, report)
    finally:
        system.stop(timeout=20)
        servers.stop_all()
        if report.violations or keep:
            # Keep the evidence: logs, and the data of NATS and Postgres.
            print(f"chaos: logs and server data kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report


def _submit_and_cancel(
    rng: random.Random,
    plans: list[JobPlan],
    submit_at: list[float],
    now: float,
    started: float,
    tasks: int,
    seconds: float,
) -> None:
    import jobsys

    while submit_at and now - started >= submit_at[0]:
        submit_at.pop(0)
        plans.append(_with_retries(lambda: _submit(rng, len(plans), tasks, now, seconds)))
    for plan in plans:
        if plan.cancel_at is not None and not plan.cancelled and now >= plan.cancel_at:
            _with_retries(lambda p=plan: jobsys.cancel(p.job_id))
            plan.cancelled = True


def _with_retries(fn: Any, attempts: int = 20) -> Any:
    for i in range(attempts):
        try:
            return fn()
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.5)
    return None


def _inject(fault: str, rng: random.Random, system: Any, servers: PrivateServers) -> None:
    from jobsys.db import close_pool

    if fault == "kill_worker" and system.workers:
        rng.choice(system.workers).send_signal(signal.SIGKILL)
    elif fault == "kill_processor" and system.processors:
        rng.choice(system.processors).send_signal(signal.SIGKILL)
    elif fault == "restart_nats":
        servers.restart_nats()
    elif fault == "restart_redis":
        servers.restart_redis()
    elif fault == "flush_redis":
        import redis

        from jobsys.settings import get_settings

        client = redis.Redis.from_url(get_settings().redis_url)
        client.flushdb()
        client.close()
    elif fault == "restart_postgres":
        servers.restart_postgres()
        close_pool()
    elif fault == "duplicate_results":
        _with_retries(lambda: _duplicate_results(rng))


def _settle(plans: list[JobPlan], timeout: float) -> dict[int, Any]:
    import jobsys
    from jobsys.states import FINAL

    deadline = time.monotonic() + timeout
    views: dict[int, Any] = {}
    next_reconcile = 0.0
    while time.monotonic() < deadline:
        views = {p.job_id: _with_retries(lambda p=p: jobsys.get_job(p.job_id)) for p in plans}
        if all(v.status in FINAL for v in views.values()):
            return views
        if time.monotonic() >= next_reconcile:
            _with_retries(_reconcile_once)
            next_reconcile = time.monotonic() + 5
        time.sleep(0.5)
    return views


def _check(plans: list[JobPlan], views: dict[int, Any], report: Report) -> None:
    from jobsys.db import connection
    from jobsys.queue import JobNames, bridge, stream_exists
    from jobsys.settings import get_settings
    from jobsys.states import FINAL

    ns = get_settings().namespace
    for plan in plans:
        v = views[plan.job_id]
        report.finals[v.status] += 1
        if v.status not in FINAL:
            report.violations.append(f"job {plan.job_id} not final: {v.status}")
            continue
        with connection() as conn:
            led = conn.execute(
                "SELECT status, count(*) AS n FROM job_tasks WHERE job_id = %s GROUP BY status",
                (plan.job_id,),
            ).fetchall()
            tasks = conn.execute(
                "SELECT task_no, status, error, deliveries FROM job_tasks WHERE job_id = %s",
                (plan.job_id,),
            ).fetchall()
            history = [r["to"] for r in conn.execute(
                "SELECT detail->>'to' AS to FROM job_events WHERE job_id = %s "
                "AND event = 'status' ORDER BY id", (plan.job_id,)).fetchall()]  # fmt: skip
        ledger = {r["status"]: r["n"] for r in led}
        counted = {"done": v.done, "failed": v.failed, "lost": v.lost, "cancelled": v.cancelled}
        for key, n in counted.items():
            if n != ledger.get(key, 0):
                report.violations.append(
                    f"job {plan.job_id}: {key} counter {n} != ledger {ledger.get(key, 0)}"
                )
            report.duplicated += max(n - ledger.get(key, 0), 0)
        if sum(counted.values()) != v.total or ledger.get("pending", 0):
            report.violations.append(f"job {plan.job_id}: counts do not add up to total")
        report.lost += v.lost
        if not plan.cancelled:
            for t in tasks:
                want = "failed" if t["task_no"] in plan.fails else "done"
                # A transient task (fails half its runs) may, rarely, fail all
                # MAX_DELIVER of its deliveries: then failing is what is specified.
                exhausted = (
                    t["task_no"] in plan.transient
                    and t["status"] == "failed"
                    and (t["deliveries"] or 0) >= MAX_DELIVER
                    and str(t["error"]).startswith(f"gave up after {MAX_DELIVER} deliveries")
                )
                if t["status"] != want and not exhausted:
                    report.violations.append(
                        f"job {plan.job_id} task {t['task_no']}: {t['status']}, expected {want}"
                        f" (deliveries {t['deliveries']}, error {t['error']!r})"
                    )
                    break
        finals_seen = [s for s in history if s in {"success", "failure", "revoked"}]
        if len(finals_seen) != 1 or history[-1] != finals_seen[0]:
            report.violations.append(f"job {plan.job_id}: status history {history}")
        if bridge().run(lambda nc, js, p=plan: stream_exists(js, JobNames.of(ns, p.job_id))):
            report.violations.append(f"job {plan.job_id}: stream left after final")
        report.redelivered += sum(1 for t in tasks if (t["deliveries"] or 0) > 1)
        report.max_deliveries = max([report.max_deliveries, *(t["deliveries"] or 0 for t in tasks)])
        plain = [
            t["deliveries"] or 0
            for t in tasks
            if t["task_no"] not in plan.fails and t["task_no"] not in plan.transient
        ]
        report.max_deliveries_plain = max([report.max_deliveries_plain, *plain])
    with connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM reconcile_runs WHERE trigger = 'actor'"
        ).fetchone()
        report.passes = int(row["n"]) if row else 0
        for r in conn.execute(
            "SELECT kind, count(*) AS n FROM reconcile_findings GROUP BY kind"
        ).fetchall():
            report.findings[r["kind"]] = int(r["n"])


def print_report(report: Report) -> None:
    """The run as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chaos run (seed {report.seed})")
    table.add_column("what")
    table.add_column("value")
    d = report.as_dict()
    for key in ("seconds", "jobs", "tasks", "settle_s", "lost", "duplicated",
                "tasks_run_again", "max_deliveries", "max_deliveries_plain",
                "scheduler_passes"):  # fmt: skip
        table.add_row(key, str(d[key]))
    for fault in FAULTS:
        table.add_row(f"fault: {fault}", str(report.faults.get(fault, 0)))
    for status, n in sorted(report.finals.items()):
        table.add_row(f"final: {status}", str(n))
    for kind, n in sorted(report.findings.items()):
        table.add_row(f"reconciler found: {kind}", str(n))
    table.add_row("invariants", "ALL HOLD" if d["ok"] else f"{len(report.violations)} violated")
    Console().print(table)
    for v in report.violations[:20]:
        print(f"VIOLATION: {v}")


def main() -> None:
    """`python -m tests.chaos`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--settle-timeout", type=float, default=240)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep logs and server data")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    from jobsys.logs import setup_logging

    setup_logging("text", "WARNING")
    report = run(seed, args.seconds, args.jobs, args.tasks, args.settle_timeout, args.keep)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print_report(report)
    sys.exit(0 if not report.violations else 1)


if __name__ == "__main__":
    main()
