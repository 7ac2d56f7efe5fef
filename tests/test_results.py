"""Result batches against real Postgres and NATS: exactly-once counting and finalize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.models import ResultBatch
from jobsys.nats.bridge import lookup_tasks
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.recording.apply import apply_results
from jobsys.worker.actors import process_results
from tests.helpers import (
    assert_counters_match_ledger,
    counters,
    leave_only,
    make_started_job,
    pull_results,
    status_events,
)


def test_the_same_result_batch_delivered_twice_changes_no_counter() -> None:
    job_id = make_started_job(200)
    items = pull_results(job_id, 100)
    assert len(items) == 100
    process_results.fn(job_id, items)
    after_first = counters(job_id)
    process_results.fn(job_id, items)
    assert counters(job_id) == after_first
    assert after_first["done"] == 100
    assert_counters_match_ledger(job_id)


def test_a_late_batch_after_the_job_finished_changes_nothing() -> None:
    job_id = make_started_job(50)
    items = pull_results(job_id, 50)
    first = apply_results(
        ResultBatch.model_validate({"job_id": job_id, "results": items}), lookup_tasks
    )
    assert first.finalized == "success"
    again = apply_results(
        ResultBatch.model_validate({"job_id": job_id, "results": items}), lookup_tasks
    )
    assert (again.moved_done, again.moved_failed, again.finalized) == (0, 0, None)
    assert jobsys.get_job(job_id).status == "success"
    assert status_events(job_id) == ["started", "success"]


def test_a_result_whose_reply_belongs_to_another_job_is_rejected_not_counted() -> None:
    job_a = make_started_job(5)
    job_b = make_started_job(5)
    items_b = pull_results(job_b, 5)
    applied = apply_results(
        ResultBatch.model_validate({"job_id": job_a, "results": items_b}), lookup_tasks
    )
    assert applied.ack == [] and len(applied.rejected) == 5
    assert counters(job_a)["done"] == 0
    with connection() as conn:
        row = conn.execute(
            "SELECT detail FROM job_events WHERE job_id = %s AND event = 'results_rejected'",
            (job_a,),
        ).fetchone()
    assert row is not None and row["detail"]["count"] == 5


def _complete_with_two_racing_batches() -> None:
    job_id = make_started_job(200)
    items = pull_results(job_id, 200)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def apply(part: list[dict[str, object]]) -> None:
        batch = ResultBatch.model_validate({"job_id": job_id, "results": part})
        barrier.wait()
        outcomes.append(apply_results(batch, lookup_tasks).finalized)

    threads = [threading.Thread(target=apply, args=(h,)) for h in (items[:100], items[100:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(str(o) for o in outcomes) == ["None", "success"]
    assert status_events(job_id) == ["started", "success"]
    assert_counters_match_ledger(job_id)
    assert counters(job_id)["done"] == 200


def test_two_concurrent_batches_that_complete_the_job_finalize_it_once() -> None:
    for _ in range(20):
        _complete_with_two_racing_batches()


_COMMIT_THEN_DIE = textwrap.dedent(
    """
    import json, os, signal, sys
    from jobsys.models import ResultBatch
    from jobsys.nats.bridge import lookup_tasks
    from jobsys.recording.apply import apply_results
    job_id, items = json.loads(sys.stdin.read())
    batch = ResultBatch.model_validate({"job_id": job_id, "results": items})
    applied = apply_results(batch, lookup_tasks)
    assert applied.moved_done == len(items), applied
    # Committed, not acked: die the hardest way before the ack.
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_results_committed_but_never_acked_are_redelivered_and_counted_once(
    tmp_path: Path,
) -> None:
    # Every message is pulled (so only redelivery can bring any back), half
    # of them are committed by a process that dies before acking.
    job_id = make_started_job(300)
    items = pull_results(job_id, 300)
    assert len(items) == 300

    proc = subprocess.run(
        [sys.executable, "-c", _COMMIT_THEN_DIE],
        input=json.dumps([job_id, items[:150]]),
        text=True,
        env=os.environ.copy(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    assert counters(job_id)["done"] == 150
    leave_only(job_id)
    # Only now do real processes start (so none competes for the first
    # delivery): all 300 unacked messages come back after ack_wait, the
    # processor runs them again and the 150 committed ones are not counted twice.
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path):
        final = wait_until_final(job_id, timeout=120)
    assert (final.status, final.done, final.failed) == ("success", 300, 0)
    assert_counters_match_ledger(job_id)
