"""The reconciler against real Postgres, Redis and NATS: one scenario per finding.

Each test sets its fault up for real (a processor SIGKILLed by its task, a
stream deleted mid-run, Dramatiq's Redis keys deleted, a bootstrap killed
half-way, a counter corrupted with SQL, a job left canceling, a stray
stream), runs reconcile passes with small thresholds passed as Settings,
and checks the job ends in the right final state with counters equal to
the ledger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from nats.js.api import StreamConfig

import jobsys
from jobsys.api.items import counted_items
from jobsys.api.read import wait_until_final
from jobsys.lifecycle.states import Status, transition
from jobsys.models import ResultBatch
from jobsys.nats.admin import DELIVERY_SLACK, ensure_job_stream
from jobsys.nats.bridge import bridge, lookup_tasks
from jobsys.nats.subjects import JobNames, parse_msg_id
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connect_direct, connection
from jobsys.pg.queries import Q
from jobsys.reconciler import (
    Finding,
    PassReport,
    inspect_job,
    lose_tasks,
    mark_lost,
    reconcile_pass,
)
from jobsys.reconciler import lost as lost_module
from jobsys.reconciler.observe import look_at_job, read_job
from jobsys.reconciler.restream import consumer_stale
from jobsys.reconciler.state import Seen
from jobsys.recording.apply import apply_results
from jobsys.recording.counting import counting_params
from jobsys.settings import Settings, get_settings
from tests.helpers import (
    assert_counters_match_ledger,
    counters,
    fast,
    ledger,
    lock_waiters,
    make_started_job,
    pull_results,
    stream_exists,
)

# -- helpers ----------------------------------------------------------------------


def of_job(report: PassReport, job_id: int) -> list[Finding]:
    return [f for f in report.findings if f.job_id == job_id]


def passes_until(
    done: Callable[[], bool], settings: Settings, timeout: float = 90.0, between: float = 0.3
) -> list[Finding]:
    """Run passes until `done()`; every finding of those passes."""
    found: list[Finding] = []
    deadline = time.monotonic() + timeout
    while True:
        found += reconcile_pass(settings).findings
        if done():
            return found
        assert time.monotonic() < deadline, f"not done after {timeout}s; findings: {found}"
        time.sleep(between)


def drop_dramatiq_messages() -> int:
    """Redis 'restarted empty': delete every key of this run's Dramatiq namespace
    (never FLUSHDB: the Redis database is shared)."""
    client = redis.Redis.from_url(get_settings().redis_url)
    keys = list(client.scan_iter(f"{get_settings().dramatiq_namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


def apply(job_id: int, items: list[dict[str, Any]]) -> None:
    apply_results(ResultBatch.model_validate({"job_id": job_id, "results": items}), lookup_tasks)


def status(job_id: int) -> str:
    return jobsys.get_job(job_id).status


# give_back_until_exhausted stops after this many pulls in a row came back
# empty, each waiting this long.
EMPTY_PULLS = 2
EMPTY_PULL_S = 2.0


def give_back_until_exhausted(job_id: int, max_deliver: int) -> int:
    """Take every task message and hand it back (nak) as often as the job's consumer
    allows (its `max_deliver` and DELIVERY_SLACK), like a processor that keeps
    dying with its tasks; then one more pull, on which the server notices the
    exhaustion and publishes MAX_DELIVERIES advisories."""
    names = JobNames.of(get_settings().namespace, job_id)
    limit = max_deliver + DELIVERY_SLACK

    async def run(nc: Any, js: Any) -> int:
        sub = await js.pull_subscribe_bind(consumer=names.consumer, stream=names.stream)
        delivered = 0
        empty = 0
        # Until pulls come back empty (not a fixed number of rounds: under
        # load a nak'ed message may come back only in the next pull).
        while empty < EMPTY_PULLS:
            try:
                msgs = await sub.fetch(100, timeout=EMPTY_PULL_S)
            except TimeoutError:
                empty += 1
                continue
            empty = 0
            for msg in msgs:
                assert msg.metadata.num_delivered <= limit, (
                    "a message was delivered more than max_deliver times"
                )
                delivered += 1
                await msg.nak()
        await sub.unsubscribe()
        return delivered

    return bridge().run(run)


def wait_for_lock_waiter() -> None:
    """Until a session of this database waits on a row lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if lock_waiters() > 0:
            return
        time.sleep(0.02)
    raise AssertionError("no session ever waited on the lock")


@pytest.fixture
def local_system(tmp_path: Path) -> LocalSystem:
    """A worker and a processor, not started (the test starts them when its fault is set)."""
    return LocalSystem(workers=1, processors=1, concurrency=8, log_dir=tmp_path / "logs")


# -- counters_drift ------------------------------------------------------------------


def test_counters_corrupted_with_sql_are_repaired_from_the_ledger_and_the_job_finishes() -> None:
    job_id = make_started_job(5)
    items = sorted(pull_results(job_id, 5), key=lambda i: i["task"])
    apply(job_id, items[:4])
    with connection() as conn:
        conn.execute("UPDATE jobs SET done_count = 0, failed_count = 2 WHERE id = %s", (job_id,))
    apply(job_id, items[4:])  # 1 + 2 accounted of 5: the job looks unfinished forever
    assert status(job_id) == "started"

    found = of_job(reconcile_pass(fast()), job_id)

    # No worker runs the teardown it enqueued: the same pass deletes the
    # finished job's stream as a stray.
    assert [(f.kind, f.action) for f in found] == [
        ("counters_drift", "repaired"),
        ("stray_stream", "deleted"),
    ]
    assert found[0].detail["before"] == {"done": 1, "failed": 2, "lost": 0, "cancelled": 0}
    assert found[0].detail["finalized"] == "success"
    assert status(job_id) == "success"
    assert_counters_match_ledger(job_id)
    assert not stream_exists(job_id)


# -- tasks_exhausted (MAX_DELIVERIES advisories) --------------------------------------


def test_tasks_whose_processor_dies_on_every_delivery_are_marked_lost_from_advisories(
    tmp_path: Path,
) -> None:
    # Thread execution: the task kills the processor itself (with isolated
    # execution only a child would die and the task would end `failed`).
    local_system = LocalSystem(
        workers=1, processors=1, concurrency=8, log_dir=tmp_path / "logs", pool="threads"
    )
    items = iter([json.dumps({"crash": True}), json.dumps({"n": 1})])
    job = jobsys.submit("tests.pipelines:crash", items, max_deliver=2, failure_threshold=0.5)
    # Only the advisory path may find it: the idle rule is out of reach.
    settings = fast(lost_after_s=3600)
    with local_system:

        def finished() -> bool:
            # The task kills its processor; a new one takes the redelivery.
            for proc in local_system.processors:
                if proc.poll() is not None:
                    local_system.processors.remove(proc)
                    local_system.start_processor()
            return status(job.id) in {"success", "failure"}

        found = passes_until(finished, settings, timeout=150, between=0.5)
        final = wait_until_final(job.id, timeout=30)
        exhausted = [f for f in found if f.job_id == job.id and f.kind == "tasks_exhausted"]
        assert [f.action for f in exhausted if f.action != "none"] == ["marked_lost"]
        # Task 1 may die with its processor too (they share one): it is done or lost.
        assert final.lost >= 1 and final.done + final.lost == 2 and final.failed == 0
        assert final.status == ("success" if final.lost == 1 else "failure")
        assert_counters_match_ledger(job.id)
        with connection() as conn:
            row = conn.execute(
                "SELECT status FROM job_tasks WHERE job_id = %s AND task_no = 0", (job.id,)
            ).fetchone()
        assert row is not None and row["status"] == "lost"
        passes_until(lambda: not stream_exists(job.id), settings)


def test_a_task_lost_from_an_advisory_records_how_many_times_nats_delivered_it() -> None:
    # The ledger is the audit: "lost" must show it was delivered max_deliver
    # times without a result (the chaos suite checks deliveries >= max_deliver).
    job_id = make_started_job(3, max_deliver=2)
    assert give_back_until_exhausted(job_id, max_deliver=2) == 3 * (2 + DELIVERY_SLACK)

    found = passes_until(lambda: status(job_id) == "failure", fast(lost_after_s=3600))

    assert ("tasks_exhausted", "marked_lost") in [(f.kind, f.action) for f in found]
    with connection() as conn:
        rows = conn.execute(
            "SELECT status, deliveries, error FROM job_tasks WHERE job_id = %s", (job_id,)
        ).fetchall()
    assert [(r["status"], r["deliveries"]) for r in rows] == [("lost", 2 + DELIVERY_SLACK)] * 3
    assert all(r["error"] == "delivered max_deliver times" for r in rows)


def test_exhausted_tasks_whose_advisories_a_pass_could_not_read_are_not_lost_by_the_idle_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The chaos suite: 18,000 advisories in one job's stream took longer to
    # read than the pass allowed (TimeoutError), and in the same pass the
    # idle rule marked the exhausted tasks lost without their delivery counts
    # ("lost after 0 deliveries"). Here the first reads fail the same way.
    real = lost_module.read_exhausted
    failed = []

    async def slow_read(js: Any, job_id: int, names: JobNames, limit: int, budget_s: float) -> Any:
        if len(failed) < 2:
            failed.append(job_id)
            raise TimeoutError
        return await real(js, job_id, names, limit, budget_s)

    monkeypatch.setattr(lost_module, "read_exhausted", slow_read)
    job_id = make_started_job(3, max_deliver=2)
    assert give_back_until_exhausted(job_id, max_deliver=2) == 3 * (2 + DELIVERY_SLACK)
    time.sleep(0.3)  # idle past lost_after_s

    found = passes_until(lambda: status(job_id) == "failure", fast())

    mine = [(f.kind, f.action) for f in found if f.job_id == job_id and f.action != "none"]
    assert mine[:2] == [("tasks_exhausted", "error")] * 2
    assert ("idle_lost", "marked_lost") not in mine
    with connection() as conn:
        rows = conn.execute(
            "SELECT status, deliveries, error FROM job_tasks WHERE job_id = %s", (job_id,)
        ).fetchall()
    assert [(r["status"], r["deliveries"]) for r in rows] == [("lost", 2 + DELIVERY_SLACK)] * 3
    assert_counters_match_ledger(job_id)


def test_a_pass_counts_the_advisories_it_could_read_in_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pass reads a job's advisories for READ_BUDGET_S at most and counts
    # those it read: no backlog is too long for a pass to make progress on.
    monkeypatch.setattr(lost_module, "READ_BUDGET_S", 0.0)
    job_id = make_started_job(3, max_deliver=2)
    assert give_back_until_exhausted(job_id, max_deliver=2) == 3 * (2 + DELIVERY_SLACK)

    found = passes_until(lambda: status(job_id) == "failure", fast(lost_after_s=3600))

    mine = [f for f in found if f.job_id == job_id and f.kind == "tasks_exhausted"]
    moved = [f.detail["moved"] for f in mine if f.action == "marked_lost"]
    assert moved == [1, 1, 1]  # one advisory a pass
    assert ledger(job_id)["lost"] == 3
    assert_counters_match_ledger(job_id)


# -- idle_lost and waiting -------------------------------------------------------------


def test_an_idle_job_with_nothing_left_for_nats_to_deliver_has_its_pending_tasks_lost() -> None:
    job_id = make_started_job(3, max_deliver=2)
    assert give_back_until_exhausted(job_id, max_deliver=2) == 3 * (2 + DELIVERY_SLACK)
    # The advisories were missed (as by a stream made before they were
    # captured): only the idle rule can find these tasks now.
    names = JobNames.of(get_settings().namespace, job_id)
    bridge().run(lambda nc, js: js.purge_stream(names.stream, subject=names.max_deliveries))

    found = passes_until(lambda: status(job_id) == "failure", fast())

    mine = [(f.kind, f.action) for f in found if f.job_id == job_id and f.action != "none"]
    # No worker runs the teardown: the pass deletes the failed job's stream itself.
    assert mine == [("idle_lost", "marked_lost"), ("stray_stream", "deleted")]
    assert counters(job_id)["lost"] == 3
    assert_counters_match_ledger(job_id)


def test_tasks_held_by_a_processor_or_not_consumed_at_all_wait_and_are_never_lost() -> None:
    job_id = make_started_job(4)
    held = pull_results(job_id, 2)  # a live processor holds two messages (unacked)
    assert len(held) == 2
    time.sleep(0.3)  # idle past lost_after_s

    found = of_job(reconcile_pass(fast()), job_id)

    assert [(f.kind, f.action) for f in found] == [("waiting", "none")]
    assert found[0].detail["reason"] == (
        "processors hold messages: running, or results not yet recorded"
    )
    assert found[0].detail["held"] == 2
    assert ledger(job_id)["pending"] == 4 and counters(job_id)["lost"] == 0
    assert status(job_id) == "started"
    jobsys.cancel(job_id)  # leave nothing active for the other tests


def test_a_job_counted_unchanged_as_waiting_is_still_looked_at_afresh_every_pass() -> None:
    # A pass neither writes nor locks a job that waits as it did: that saves
    # the write, never the look. A consumer lost, then tasks NATS gave up on,
    # each after passes that counted the job as still waiting, are found by
    # the very next pass.
    job_id = make_started_job(3, max_deliver=1)
    time.sleep(0.3)  # idle past lost_after_s
    for _ in range(3):
        found = of_job(reconcile_pass(fast()), job_id)
        assert [(f.kind, f.action) for f in found] == [("waiting", "none")]
    with connection() as conn:
        rows = conn.execute(
            "SELECT kind, seen FROM reconcile_findings WHERE job_id = %s", (job_id,)
        ).fetchall()
    assert [(r["kind"], r["seen"]) for r in rows] == [("waiting", 3)]  # counted, not rewritten

    names = JobNames.of(get_settings().namespace, job_id)
    assert bridge().run(lambda nc, js: js.delete_consumer(names.stream, names.consumer))
    found = of_job(reconcile_pass(fast()), job_id)
    assert [(f.kind, f.action) for f in found] == [("consumer_missing", "recreated_consumer")]
    found = of_job(reconcile_pass(fast()), job_id)
    assert [(f.kind, f.action) for f in found] == [("waiting", "none")]

    assert give_back_until_exhausted(job_id, max_deliver=1) == 3 * (1 + DELIVERY_SLACK)
    found = of_job(reconcile_pass(fast(lost_after_s=3600)), job_id)
    assert [(f.kind, f.action) for f in found] == [
        ("tasks_exhausted", "marked_lost"),
        ("stray_stream", "deleted"),  # no worker runs the teardown
    ]
    assert status(job_id) == "failure" and counters(job_id)["lost"] == 3
    assert_counters_match_ledger(job_id)


# -- stream_missing --------------------------------------------------------------------


def test_a_stream_deleted_mid_run_is_recreated_with_its_pending_tasks(
    local_system: LocalSystem,
) -> None:
    items = (json.dumps({"i": i, "sleep_ms": 100}) for i in range(200))
    with local_system:
        job = jobsys.submit("echo", items)
        deadline = time.monotonic() + 60
        while counters(job.id)["done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        names = JobNames.of(get_settings().namespace, job.id)
        bridge().run(lambda nc, js: js.delete_stream(names.stream))  # NATS lost its data
        assert status(job.id) == "started"

        found = passes_until(lambda: stream_exists(job.id), fast(lost_after_s=3600))

        try:
            final = wait_until_final(job.id, timeout=120)
        except Exception:
            print(json.dumps(inspect_job(job.id), default=str, indent=1))
            raise
    recreated = [f for f in found if f.job_id == job.id and f.kind == "stream_missing"]
    assert [f.action for f in recreated] == ["recreated"]
    assert recreated[0].detail["republished"] > 0
    assert (final.status, final.done, final.failed, final.lost) == ("success", 200, 0, 0)
    assert_counters_match_ledger(job.id)


# -- bootstrap_stalled -----------------------------------------------------------------

_BOOTSTRAP = (
    "import sys; from jobsys.bootstrap.start import run_bootstrap; run_bootstrap(int(sys.argv[1]))"
)


def test_a_bootstrap_killed_half_way_is_re_enqueued_and_resumes(
    local_system: LocalSystem,
) -> None:
    total = 20_000
    job = jobsys.submit("echo", counted_items(total))
    drop_dramatiq_messages()  # its bootstrap runs in the subprocess below, not a worker
    proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, str(job.id)], env=os.environ)
    try:
        while jobsys.get_job(job.id).published == 0:
            assert proc.poll() is None, "bootstrap ended before publishing anything"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = jobsys.get_job(job.id)
    assert (killed_at.status, 0 < killed_at.published < total) == ("started", True)

    found: list[Finding] = []
    deadline = time.monotonic() + 30
    while not any(f.kind == "bootstrap_stalled" and f.action != "none" for f in found):
        assert time.monotonic() < deadline
        time.sleep(0.3)
        found += of_job(reconcile_pass(fast(lost_after_s=3600)), job.id)
    assert [f.action for f in found if f.kind == "bootstrap_stalled"][-1] == "enqueued_bootstrap"

    with local_system:
        final = wait_until_final(job.id, timeout=300)
    assert (final.status, final.done, final.published) == ("success", total, total)
    assert_counters_match_ledger(job.id)


# -- queued_stale ------------------------------------------------------------------------


def test_a_queued_job_whose_bootstrap_message_redis_lost_is_re_enqueued(
    local_system: LocalSystem,
) -> None:
    job = jobsys.submit("echo", counted_items(50))
    assert drop_dramatiq_messages() > 0  # Redis restarted empty: the message is gone
    time.sleep(0.3)

    found = of_job(reconcile_pass(fast()), job.id)
    again = of_job(reconcile_pass(fast(queued_stale_s=60)), job.id)

    assert [(f.kind, f.action) for f in found] == [("queued_stale", "enqueued_bootstrap")]
    assert again == []  # enqueued once per idle period, not once per pass
    with local_system:
        final = wait_until_final(job.id, timeout=120)
    assert (final.status, final.done) == ("success", 50)
    assert_counters_match_ledger(job.id)


# -- cancel_overdue ----------------------------------------------------------------------


def test_a_job_left_canceling_past_the_grace_period_is_forced_revoked() -> None:
    job_id = make_started_job(10)
    apply(job_id, pull_results(job_id, 3))
    with connection() as conn:
        # A cancel whose teardown never ran (e.g. NATS was down and Redis lost it).
        assert transition(conn, job_id, Status.CANCELING, {Status.STARTED}, "cancel") is not None

    assert of_job(reconcile_pass(fast(cancel_grace_s=3600)), job_id) == []  # within grace
    time.sleep(0.3)
    found = of_job(reconcile_pass(fast()), job_id)

    assert [(f.kind, f.action) for f in found] == [("cancel_overdue", "revoked")]
    assert (status(job_id), counters(job_id)["done"], counters(job_id)["cancelled"]) == (
        "revoked",
        3,
        7,
    )
    assert_counters_match_ledger(job_id)
    assert not stream_exists(job_id)


# -- stray_stream -----------------------------------------------------------------------


def test_streams_of_final_or_unknown_jobs_are_deleted_and_others_kept() -> None:
    settings = get_settings()
    finished = make_started_job(2)
    apply(finished, pull_results(finished, 2))  # success; no worker runs its teardown
    assert status(finished) == "success" and stream_exists(finished)
    unknown = 900_000_000 + os.getpid()
    unknown_names = JobNames.of(settings.namespace, unknown)
    other = f"{settings.namespace}_not_a_job"

    async def create(nc: Any, js: Any) -> None:
        await ensure_job_stream(
            nc, js, unknown_names, {"pipeline": "echo", "max_deliver": 1}, settings
        )
        await js.add_stream(StreamConfig(name=other, subjects=[f"{settings.namespace}.other"]))

    bridge().run(create)
    active = make_started_job(1)

    report = reconcile_pass(fast(lost_after_s=3600))

    assert [(f.kind, f.action, f.detail["job_status"]) for f in of_job(report, finished)] == [
        ("stray_stream", "deleted", "success")
    ]
    assert [(f.kind, f.action, f.detail["job_status"]) for f in of_job(report, unknown)] == [
        ("stray_stream", "deleted", "unknown")
    ]
    assert not stream_exists(finished) and not stream_exists(unknown)
    assert stream_exists(active)
    assert bridge().run(lambda nc, js: js.delete_stream(other))  # it was left alone
    jobsys.cancel(active)


def test_a_just_finished_jobs_stream_is_left_to_its_teardown_within_the_grace() -> None:
    finished = make_started_job(2)
    apply(finished, pull_results(finished, 2))  # success; its teardown is "on the way"

    assert of_job(reconcile_pass(fast(stray_grace_s=3600)), finished) == []
    assert stream_exists(finished)
    assert [(f.kind, f.action) for f in of_job(reconcile_pass(fast()), finished)] == [
        ("stray_stream", "deleted")
    ]
    assert not stream_exists(finished)


# -- concurrency ------------------------------------------------------------------------


def test_two_passes_at_once_act_on_each_job_once() -> None:
    drifted = make_started_job(4)
    with connection() as conn:
        conn.execute("UPDATE jobs SET done_count = 3 WHERE id = %s", (drifted,))
    canceling = make_started_job(4)
    with connection() as conn:
        transition(conn, canceling, Status.CANCELING, {Status.STARTED}, "cancel")
    queued = jobsys.submit("echo", counted_items(3)).id
    drop_dramatiq_messages()
    time.sleep(0.3)
    settings = fast(lost_after_s=3600)
    barrier = threading.Barrier(2)
    reports: list[PassReport] = []

    def run() -> None:
        barrier.wait()
        reports.append(reconcile_pass(settings))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(reports) == 2
    for job_id, kind, action in (
        (drifted, "counters_drift", "repaired"),
        (canceling, "cancel_overdue", "revoked"),
        (queued, "queued_stale", "enqueued_bootstrap"),
    ):
        acted = [
            (f.kind, f.action) for r in reports for f in of_job(r, job_id) if f.action != "none"
        ]
        assert acted == [(kind, action)], f"job {job_id}: {acted}"
    assert counters(drifted)["done"] == 0
    assert status(canceling) == "revoked"
    for job_id in (drifted, canceling):
        assert_counters_match_ledger(job_id)
    jobsys.cancel(drifted)
    jobsys.cancel(queued)


def _task0_result(job_id: int) -> dict[str, Any]:
    items = pull_results(job_id, 2)
    return next(i for i in items if i["task"] == 0)


def test_a_late_result_holding_the_task_lock_wins_and_the_reconcile_counts_nothing() -> None:
    job_id = make_started_job(2)
    item = _task0_result(job_id)
    outcome: list[tuple[int, Status | None]] = []
    with connect_direct() as conn, conn.transaction():
        row = conn.execute(
            Q.record_results,
            counting_params(
                job_id, [(0, "done", json.dumps(item["result"]), None, item["deliveries"])], [None]
            ),
        ).fetchone()
        assert row is not None and row["moved_done"] == 1
        # The reconcile now blocks on task 0's row lock until the result commits.
        racer = threading.Thread(target=lambda: outcome.append(lose_tasks(job_id, [0], "test")))
        racer.start()
        wait_for_lock_waiter()
    racer.join()
    assert outcome[0][0] == 0
    assert (counters(job_id)["done"], counters(job_id)["lost"]) == (1, 0)
    assert_counters_match_ledger(job_id)
    jobsys.cancel(job_id)


def test_a_reconcile_holding_the_task_lock_wins_and_the_late_result_counts_nothing() -> None:
    job_id = make_started_job(2)
    item = _task0_result(job_id)
    applied: list[Any] = []
    with connect_direct() as conn, conn.transaction():
        assert mark_lost(conn, job_id, [0], "test") == 1
        batch = ResultBatch.model_validate({"job_id": job_id, "results": [item]})
        racer = threading.Thread(target=lambda: applied.append(apply_results(batch, lookup_tasks)))
        racer.start()
        wait_for_lock_waiter()
    racer.join()
    assert (applied[0].moved_done, applied[0].moved_failed) == (0, 0)
    assert (counters(job_id)["done"], counters(job_id)["lost"]) == (0, 1)
    assert_counters_match_ledger(job_id)
    jobsys.cancel(job_id)


def test_reconciles_racing_late_results_count_every_task_exactly_once() -> None:
    job_id = make_started_job(40)
    items = pull_results(job_id, 40)
    by_task = {i["task"]: i for i in items}
    for task in range(40):
        barrier = threading.Barrier(2)
        batch = ResultBatch.model_validate({"job_id": job_id, "results": [by_task[task]]})

        def result(b: ResultBatch = batch, bar: threading.Barrier = barrier) -> None:
            bar.wait()
            apply_results(b, lookup_tasks)

        def lose(t: int = task, bar: threading.Barrier = barrier) -> None:
            bar.wait()
            lose_tasks(job_id, [t], "test")

        threads = [threading.Thread(target=result), threading.Thread(target=lose)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    c = counters(job_id)
    assert c["done"] + c["lost"] == 40
    assert status(job_id) == "success" if c["lost"] == 0 else "failure"
    assert_counters_match_ledger(job_id)


# -- scheduler, CLI, inspect ------------------------------------------------------------


def test_the_scheduler_enqueues_passes_that_a_worker_runs(local_system: LocalSystem) -> None:
    from jobsys.worker.scheduler import run_scheduler

    with local_system:
        assert run_scheduler(fast(reconcile_every_s=0.05), max_ticks=2) == 2
        deadline = time.monotonic() + 60
        while True:
            with connection() as conn:
                row = conn.execute(
                    "SELECT count(*) AS n FROM reconcile_runs "
                    "WHERE trigger = 'actor' AND finished_at IS NOT NULL"
                ).fetchone()
            if row and row["n"] >= 2:
                break
            assert time.monotonic() < deadline, "the worker never ran the reconcile actor"
            time.sleep(0.2)


def test_cli_reconcile_json_and_inspect_show_counters_ledger_nats_and_findings() -> None:
    from jobsys.cli.main import main

    job_id = make_started_job(3)
    with connection() as conn:
        conn.execute("UPDATE jobs SET failed_count = 1 WHERE id = %s", (job_id,))
    runner = CliRunner()

    out = runner.invoke(main, ["reconcile", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["jobs_checked"] >= 1
    mine = [f for f in doc["findings"] if f["job_id"] == job_id]
    assert [(f["kind"], f["action"]) for f in mine] == [("counters_drift", "repaired")]
    assert set(mine[0]) == {"job_id", "kind", "action", "detail"}

    shown = runner.invoke(main, ["inspect", str(job_id), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["counters"]["failed"] == 0 and info["ledger"]["pending"] == 3
    assert info["nats"]["stream"] is True and info["nats"]["num_pending"] == 3
    assert info["findings"][0]["kind"] == "counters_drift"
    assert info == inspect_job(job_id) | {"findings": info["findings"]}

    table = runner.invoke(main, ["inspect", str(job_id)])
    assert table.exit_code == 0 and "counters_drift" in table.output

    missing = runner.invoke(main, ["inspect", "999999999"])
    assert missing.exit_code != 0
    assert missing.stderr.strip() == "jobsys: job 999999999 not found"
    jobsys.cancel(job_id)


def test_advisory_sequences_map_to_tasks_through_the_message_id() -> None:
    # The capture itself: each exhausted message yields one advisory in the
    # job's own stream, naming the stream sequence of a task message.
    job_id = make_started_job(2, max_deliver=1)
    give_back_until_exhausted(job_id, max_deliver=1)
    names = JobNames.of(get_settings().namespace, job_id)

    async def tasks(nc: Any, js: Any) -> list[int]:
        info = await js.stream_info(names.stream, subjects_filter=names.max_deliveries)
        assert (info.state.subjects or {}).get(names.max_deliveries) == 2
        found = []
        seq = 1
        while True:
            try:
                adv = await js.get_msg(names.stream, seq, subject=names.max_deliveries, next=True)
            except Exception:
                return sorted(found)
            seq = adv.seq + 1
            task_msg = await js.get_msg(names.stream, json.loads(adv.data)["stream_seq"])
            ids = parse_msg_id(task_msg.headers["Nats-Msg-Id"])
            assert ids is not None
            found.append(ids[1])

    assert bridge().run(tasks) == [0, 1]
    report = reconcile_pass(fast(lost_after_s=3600))
    assert [(f.kind, f.action) for f in of_job(report, job_id)] == [
        ("tasks_exhausted", "marked_lost"),
        ("stray_stream", "deleted"),
    ]
    assert status(job_id) == "failure" and counters(job_id)["lost"] == 2
    assert_counters_match_ledger(job_id)


def test_a_pass_prunes_rollups_and_passes_older_than_the_window_and_keeps_the_rest() -> None:
    with connection() as conn:
        conn.execute(
            "INSERT INTO job_minutes (job_id, minute, done) VALUES "
            "(-1, now() - interval '8 days', 5), (-1, date_trunc('minute', now()), 5)"
        )
        old_quiet, old_found = (
            conn.execute(
                "INSERT INTO reconcile_runs (started_at, finished_at, findings) "
                "VALUES (now() - interval '8 days', now() - interval '8 days', %s) RETURNING id",
                (n,),
            ).fetchone()["id"]
            for n in (0, 1)
        )
    run_id = reconcile_pass(fast(history_days=7)).run_id
    with connection() as conn:
        minutes = conn.execute("SELECT count(*) AS n FROM job_minutes WHERE job_id = -1").fetchone()
        runs = {
            r["id"]
            for r in conn.execute(
                "SELECT id FROM reconcile_runs WHERE id = ANY(%s)",
                ([old_quiet, old_found, run_id],),
            ).fetchall()
        }
        conn.execute("DELETE FROM job_minutes WHERE job_id = -1")
    assert minutes["n"] == 1
    # Passes with findings too (issue 12): a finding still being seen points at
    # the latest pass that saw it (tests/test_findings.py).
    assert runs == {run_id}


def test_a_stale_consumer_is_made_anew_and_delivers_every_stored_message_at_once() -> None:
    # The chaos suite left a consumer that awaited acks for 640 messages of which
    # the stream held 5, after a NATS restart: nothing was delivered again for 4
    # minutes and the job stayed started. Whatever made a consumer stale, its
    # repair is a new consumer, which owes nobody an ack: every message still
    # stored is delivered at once, and the job can end.
    job_id = make_started_job(4)
    held = pull_results(job_id, 4)  # delivered and never acked: the consumer awaits 4 acks
    assert len(held) == 4
    job = read_job(job_id)
    assert job is not None
    handled = consumer_stale(Seen(job=job, nats=None, settings=get_settings()))
    assert handled.action == "recreated_consumer"
    names = JobNames.of(get_settings().namespace, job_id)
    view = look_at_job(get_settings().namespace, job_id)
    assert (view.consumer, view.num_ack_pending, view.num_pending) == (True, 0, 4)
    again = pull_results(job_id, 4)  # well within the ack_wait the old deliveries hold
    assert sorted(i["task"] for i in again) == [0, 1, 2, 3]
    assert _consumers(names) == [names.consumer]
    apply(job_id, again)
    assert wait_until_final(job_id, timeout=30).status == "success"
    assert_counters_match_ledger(job_id)


def _consumers(names: JobNames) -> list[str]:
    async def run(nc: Any, js: Any) -> list[str]:
        return [c.name for c in await js.consumers_info(names.stream)]

    return bridge().run(run)
