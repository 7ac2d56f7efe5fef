"""Retention against real Postgres and NATS: `jobsys prune` and the reconciler's duty
delete old ledgers and events, keep the job rows and counters, and never touch a
counter of an active job, even while a late result races the pruning."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import jobsys
from jobsys.lifecycle.retention import prune_job
from jobsys.models import ResultBatch
from jobsys.nats.bridge import lookup_tasks
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler import reconcile_pass
from jobsys.recording.apply import apply_results
from tests.helpers import assert_counters_match_ledger, counters, ledger, make_started_job
from tests.helpers import pull_results as pull
from tests.test_cli import jobsys_cli

# How long the late batch lets the prune chunk run into its lock first.
WAIT_FOR_THE_CHUNK_S = 0.5


def _finished(n: int, days_ago: float) -> tuple[int, list[dict[str, Any]]]:
    """A job run to success in-process, its finish moved `days_ago` into the past."""
    job_id = make_started_job(n)
    items = pull(job_id, n)
    for k in range(0, n, 500):
        apply_results(
            ResultBatch.model_validate({"job_id": job_id, "results": items[k : k + 500]}),
            lookup_tasks,
        )
    assert jobsys.get_job(job_id).status == "success"
    with connection() as conn:
        conn.execute(
            "UPDATE jobs SET finished_at = now() - make_interval(days => %s) WHERE id = %s",
            (days_ago, job_id),
        )
    return job_id, items


def _events(job_id: int) -> int:
    with connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM job_events WHERE job_id = %s", (job_id,))
        return int(row.fetchone()["n"])  # type: ignore[index]


def test_prune_dry_run_then_prune_keeps_the_job_row_and_its_counters() -> None:
    job_id, _ = _finished(30, days_ago=400)
    before = counters(job_id)
    events = _events(job_id)
    dry = jobsys_cli("prune", "--older-than", "365", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["tasks_deleted"] == 0
    (listed,) = [j for j in plan["jobs"] if j["job_id"] == job_id]
    assert (listed["status"], listed["tasks"], listed["events"]) == ("success", 30, events)
    assert ledger(job_id)["total"] == 30  # nothing deleted

    done = jobsys_cli("prune", "--older-than", "365", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (pruned,) = [j for j in report["jobs"] if j["job_id"] == job_id]
    assert (pruned["tasks"], pruned["events"], pruned["complete"]) == (30, events, True)
    assert set(report) >= {"dry_run", "older_than_days", "jobs", "tasks_deleted",
                           "events_deleted"}  # fmt: skip
    assert ledger(job_id)["total"] == 0 and _events(job_id) == 0
    assert counters(job_id) == before
    status = json.loads(jobsys_cli("status", str(job_id), "--json", check=True).stdout)
    assert status["ledger_state"] == "pruned" and status["ledger_pruned_at"] is not None
    assert status["status"] == "success" and status["done"] == 30

    for args in (("results", str(job_id)), ("tasks", str(job_id)), ("retry", str(job_id))):
        proc = jobsys_cli(*args)
        assert proc.returncode == 1
        assert f"job {job_id}'s task ledger was pruned on" in proc.stderr
        assert proc.stderr.count("\n") == 1
    again = json.loads(jobsys_cli("prune", "--older-than", "365", "--json", check=True).stdout)
    assert job_id not in [j["job_id"] for j in again["jobs"]]
    text = jobsys_cli("prune", "--older-than", "365", "--dry-run", check=True).stdout
    assert "would delete" in text


def test_a_reconcile_pass_prunes_jobs_final_longer_than_the_retention() -> None:
    old, _ = _finished(20, days_ago=31)  # default JOBSYS_RETAIN_DAYS is 30
    recent, _ = _finished(20, days_ago=29)
    active = make_started_job(5)
    reconcile_pass()
    assert jobsys.get_job(old).ledger_state == "pruned" and ledger(old)["total"] == 0
    assert jobsys.get_job(recent).ledger_state == "kept" and ledger(recent)["total"] == 20
    assert ledger(active)["pending"] == 5
    with connection() as conn:
        run = conn.execute("SELECT detail FROM reconcile_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert run is not None
    assert old in [j["job_id"] for j in run["detail"]["duties"]["retention"]["jobs"]]
    assert "hooks_resent" in run["detail"]["duties"]["hooks"]


def test_prune_of_a_job_racing_a_late_result_changes_no_counter_of_any_active_job() -> None:
    final_id, final_items = _finished(3_000, days_ago=100)
    final_before = counters(final_id)
    active_id = make_started_job(2_000)
    active_items = pull(active_id, 2_000)
    assert len(active_items) == 2_000
    pruning, pruned = threading.Event(), threading.Event()
    late_started, active_started = threading.Event(), threading.Event()
    late_applied: list[tuple[int, int]] = []
    active_during_prune: list[int] = []
    errors: list[BaseException] = []

    def prune() -> None:
        try:
            pruning.set()
            # Small chunks: many separate transactions for the others to race.
            assert prune_job(final_id, 30 * 86_400, chunk=50) is not None
        except BaseException as exc:
            errors.append(exc)
        finally:
            pruned.set()

    def late() -> None:
        # The finished job's results delivered again, over and over, while
        # its ledger rows are being deleted under them.
        try:
            k = 0
            while not pruned.is_set():
                part = final_items[k % 3_000 : k % 3_000 + 100]
                batch = ResultBatch.model_validate({"job_id": final_id, "results": part})
                out = apply_results(batch, lookup_tasks)
                late_applied.append((out.moved_done, out.moved_failed))
                late_started.set()
                k += 100
        except BaseException as exc:
            errors.append(exc)
        finally:
            late_started.set()

    def active() -> None:
        # The active job's results, counted before, during and after the prune.
        try:
            for k in range(0, 2_000, 10):
                part = active_items[k : k + 10]
                apply_results(
                    ResultBatch.model_validate({"job_id": active_id, "results": part}), lookup_tasks
                )
                if pruning.is_set() and not pruned.is_set():
                    active_during_prune.append(k)
                active_started.set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            active_started.set()

    racers = [threading.Thread(target=f) for f in (late, active)]
    for t in racers:
        t.start()
    late_started.wait(60)
    active_started.wait(60)
    pruner = threading.Thread(target=prune)
    pruner.start()
    for t in (pruner, *racers):
        t.join(120)
    assert not errors, errors
    assert active_during_prune, "no active batch was applied while the prune ran"
    assert late_applied and all(moved == (0, 0) for moved in late_applied)
    # The active job: every result counted exactly once, nothing else.
    assert counters(active_id) == {"done": 2_000, "failed": 0, "lost": 0, "cancelled": 0,
                                   "total": 2_000}  # fmt: skip
    assert_counters_match_ledger(active_id)
    assert jobsys.get_job(active_id).status == "success"
    # The pruned job: counters as they were, ledger gone.
    assert counters(final_id) == final_before
    assert jobsys.get_job(final_id).ledger_state == "pruned"
    assert ledger(final_id)["total"] == 0


def test_a_prune_chunk_and_a_late_batch_lock_the_ledger_in_one_order_and_never_deadlock() -> None:
    """CI once saw a prune chunk and a late result batch of the same job deadlock.
    The batch locks its tasks in task order; the chunk's DELETE locked rows in
    the order its scan met them, and after updates the heap's order is not the
    tasks'. Here the heap holds the rows in reverse order and the chunk is
    planned as a sequential scan (what a planner may choose): the chunk then
    locked task 19 down to 10 while the batch held 5 and wanted 10."""
    job_id, _ = _finished(20, days_ago=100)
    with connection() as conn:
        # Every row rewritten, last task first: the heap now holds them reversed.
        for task_no in range(19, -1, -1):
            conn.execute(
                "UPDATE job_tasks SET error = 'x' WHERE job_id = %s AND task_no = %s",
                (job_id, task_no),
            )
    batch_holds_5, chunk_waits = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def late_batch() -> None:
        # What record_results does: lock the batch's tasks (5 and 10) in task order.
        try:
            with connection() as conn, conn.transaction():
                conn.execute(
                    "SELECT 1 FROM job_tasks WHERE job_id = %s AND task_no = 5 FOR UPDATE",
                    (job_id,),
                )
                batch_holds_5.set()
                assert chunk_waits.wait(30)
                time.sleep(WAIT_FOR_THE_CHUNK_S)  # the chunk is blocked on task 5 by now
                conn.execute(
                    "SELECT 1 FROM job_tasks WHERE job_id = %s AND task_no = 10 FOR UPDATE",
                    (job_id,),
                )
        except BaseException as exc:
            errors.append(exc)

    def chunk() -> None:
        try:
            assert batch_holds_5.wait(30)
            with connection() as conn, conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                conn.execute("SET LOCAL enable_bitmapscan = off")
                chunk_waits.set()
                conn.execute(Q.prune_task_chunk, {"job_id": job_id, "lo": 0, "hi": 20})
        except BaseException as exc:
            errors.append(exc)

    racers = [threading.Thread(target=f) for f in (late_batch, chunk)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(60)
    assert errors == []
    assert ledger(job_id)["total"] == 0
