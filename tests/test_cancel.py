"""Cancel: guarded, idempotent, stops remote work; against real Postgres, Redis and NATS."""

from __future__ import annotations

import json
import threading
import time
import types
from typing import Any

import pytest
from click.testing import CliRunner

import jobsys
from jobsys.api import cancel as cancel_module
from jobsys.api.cancel import INLINE_REVOKE_CHUNKS
from jobsys.api.items import counted_items
from jobsys.api.read import wait_until_final
from jobsys.bootstrap.start import run_bootstrap
from jobsys.cli.main import main as cli
from jobsys.dramatiq.messages import QUEUE_OF, TEARDOWN_JOB
from jobsys.lifecycle import revoke as revoke_module
from jobsys.lifecycle.revoke import BEFORE_FIRST_TASK, revoke
from jobsys.lifecycle.states import Status, transition
from jobsys.lifecycle.teardown import run_teardown
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connect_direct, connection
from jobsys.pg.queries import Q
from jobsys.settings import reset_settings
from jobsys.worker.actors import process_results, teardown_job
from tests.helpers import (
    assert_counters_match_ledger,
    counters,
    events_of,
    ledger,
    lock_waiters,
    make_started_job,
    pull_results,
    status_events,
    stream_exists,
    take_sent,
)


def _wait_for(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the library call -----------------------------------------------------------


def test_cancel_of_a_started_job_deletes_its_stream_cancels_pending_tasks_and_revokes_it() -> None:
    job_id = make_started_job(100)
    process_results.fn(job_id, pull_results(job_id, 30))
    assert stream_exists(job_id)
    result = jobsys.cancel(job_id)
    assert (result.job_id, result.status, result.changed) == (job_id, "revoked", True)
    view = jobsys.get_job(job_id)
    assert (view.status, view.done, view.cancelled, view.pending) == ("revoked", 30, 70, 0)
    assert view.finished_at is not None
    assert not stream_exists(job_id)
    assert status_events(job_id) == ["started", "canceling", "revoked"]
    assert [e["count"] for e in events_of(job_id, "tasks_cancelled")] == [70]
    assert len(events_of(job_id, "stream_deleted")) == 1
    assert_counters_match_ledger(job_id)


def test_cancel_of_a_queued_job_revokes_it_and_its_late_bootstrap_does_nothing() -> None:
    job = jobsys.submit("echo", counted_items(50))
    result = jobsys.cancel(job.id)
    assert (result.status, result.changed) == ("revoked", True)
    # The bootstrap message was already enqueued; when it runs, it must not
    # create a stream or publish anything for the revoked job.
    assert run_bootstrap(job.id) == "inactive"
    after = jobsys.get_job(job.id)
    assert (after.status, after.cancelled, after.published) == ("revoked", 50, 0)
    assert not stream_exists(job.id)
    assert status_events(job.id) == ["canceling", "revoked"]
    assert_counters_match_ledger(job.id)


@pytest.mark.parametrize("fail", [False, True])
def test_cancel_of_a_finished_job_changes_nothing_and_says_so(fail: bool) -> None:
    job_id = make_started_job(10)
    process_results.fn(job_id, pull_results(job_id, 10, fail={0} if fail else None))
    before = jobsys.get_job(job_id)
    assert before.status == ("failure" if fail else "success")
    result = jobsys.cancel(job_id)
    assert (result.status, result.changed) == (before.status, False)
    assert jobsys.get_job(job_id).model_dump() == before.model_dump()
    assert status_events(job_id) == ["started", before.status]
    run_teardown(job_id)  # the finalizer's teardown message (no worker runs here)


def test_cancelling_twice_is_harmless() -> None:
    job_id = make_started_job(20)
    first = jobsys.cancel(job_id)
    after_first = jobsys.get_job(job_id)
    second = jobsys.cancel(job_id)
    assert (first.changed, second.changed) == (True, False)
    assert first.status == second.status == "revoked"
    assert jobsys.get_job(job_id).model_dump() == after_first.model_dump()
    assert status_events(job_id) == ["started", "canceling", "revoked"]


def _two_cancels(job_id: int) -> list[jobsys.CancelResult]:
    barrier = threading.Barrier(2)
    results: list[jobsys.CancelResult] = []

    def cancel() -> None:
        barrier.wait()
        results.append(jobsys.cancel(job_id))

    threads = [threading.Thread(target=cancel) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_cancels_at_once_revoke_the_job_once() -> None:
    for _ in range(20):
        job_id = make_started_job(20)
        results = _two_cancels(job_id)
        assert sorted(r.changed for r in results) == [False, True]
        assert jobsys.get_job(job_id).status == "revoked"
        assert status_events(job_id) == ["started", "canceling", "revoked"]
        assert [e["count"] for e in events_of(job_id, "tasks_cancelled")] == [20]
        assert not stream_exists(job_id)
        assert_counters_match_ledger(job_id)


def test_cancel_of_an_unknown_job_raises_job_not_found() -> None:
    with pytest.raises(jobsys.JobNotFound, match="job 987654321 not found"):
        jobsys.cancel(987_654_321)


def test_a_canceling_job_left_by_a_failed_teardown_is_finished_by_the_next_cancel() -> None:
    job_id = make_started_job(10)
    # A cancel whose teardown never ran (e.g. NATS was down): status only.
    from jobsys.lifecycle.states import CANCELABLE, Status, transition

    with connection() as conn:
        assert transition(conn, job_id, Status.CANCELING, CANCELABLE, "test") is not None
    result = jobsys.cancel(job_id)
    assert (result.status, result.changed) == ("revoked", False)
    assert not stream_exists(job_id)
    assert ledger(job_id)["cancelled"] == 10


def test_work_finished_while_canceling_is_recorded_but_the_job_ends_revoked() -> None:
    job_id = make_started_job(20)
    items = pull_results(job_id, 20)
    db = connect_direct(autocommit=False)
    try:
        # Hold task 0 so the result batch stops inside its transaction, after
        # it has seen the job `started`.
        db.execute(
            "SELECT 1 FROM job_tasks WHERE job_id = %s AND task_no = 0 FOR UPDATE", (job_id,)
        )

        batch = threading.Thread(target=process_results.fn, args=(job_id, items))
        batch.start()
        _wait_for(lambda: lock_waiters() == 1, "the batch to wait on the task lock")
        out: list[jobsys.CancelResult] = []
        canceller = threading.Thread(target=lambda: out.append(jobsys.cancel(job_id)))
        canceller.start()
        # Cancel committed `canceling`, and its revoke now queues behind the batch.
        _wait_for(lambda: jobsys.get_job(job_id).status == "canceling", "canceling")
        _wait_for(lambda: lock_waiters() == 2, "the revoke to wait on the task lock")
        db.rollback()
        batch.join(30)
        canceller.join(30)
    finally:
        db.close()
    assert out and (out[0].status, out[0].changed) == ("revoked", True)
    view = jobsys.get_job(job_id)
    # The batch committed first, while canceling: its 20 results are counted,
    # yet every task being accounted for did not finalize the job.
    assert (view.status, view.done, view.cancelled) == ("revoked", 20, 0)
    assert status_events(job_id) == ["started", "canceling", "revoked"]
    assert not stream_exists(job_id)
    assert_counters_match_ledger(job_id)


def test_late_results_after_revoke_are_acked_recorded_and_never_counted() -> None:
    job_id = make_started_job(10)
    items = pull_results(job_id, 10)
    jobsys.cancel(job_id)
    before = counters(job_id)
    process_results.fn(job_id, items)
    process_results.fn(job_id, items[:4])
    assert counters(job_id) == before
    assert jobsys.get_job(job_id).status == "revoked"
    assert [(e["count"], e["status"]) for e in events_of(job_id, "late_results")] == [
        (10, "revoked"),
        (4, "revoked"),
    ]
    assert_counters_match_ledger(job_id)


def test_results_for_tasks_a_cancel_already_cancelled_are_reported_late() -> None:
    # A batch that lands while the job is canceling, after a chunk cancelled
    # some of its tasks: those count nothing, and the job's log says they came
    # (as it does once the job is revoked); the rest of the batch counts.
    job_id = make_started_job(10)
    items = pull_results(job_id, 10)
    with connection() as conn, conn.transaction():
        assert transition(conn, job_id, Status.CANCELING, {Status.STARTED}, "cancel")
        chunk = conn.execute(
            Q.cancel_pending_chunk, {"job_id": job_id, "after": BEFORE_FIRST_TASK, "rows": 6}
        ).fetchone()
        assert chunk is not None and chunk["cancelled"] == 6
    process_results.fn(job_id, items)
    assert counters(job_id)["done"] == 4
    assert [(e["count"], e["status"]) for e in events_of(job_id, "late_results")] == [
        (6, "canceling"),
    ]
    teardown_job.fn(job_id)  # the cancel's rest, as the teardown actor does it
    assert jobsys.get_job(job_id).status == "revoked"
    assert_counters_match_ledger(job_id)


def test_a_repeat_in_the_batch_that_completes_a_job_is_not_late() -> None:
    # The job goes final with this batch: its one task reported again (already
    # counted) is a redelivery, not a result that came after the job ended.
    job_id = make_started_job(10)
    items = pull_results(job_id, 10)
    process_results.fn(job_id, items[:5])
    process_results.fn(job_id, items[5:] + items[:1])
    assert jobsys.get_job(job_id).status == "success"
    assert events_of(job_id, "late_results") == []
    assert_counters_match_ledger(job_id)


def test_a_revoke_whose_chunk_reached_the_last_task_ends_revoked_past_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A clock that moves a second per look: the deadline passes during the one
    # chunk a small job needs. Nothing is left after that chunk, so the job is
    # revoked now rather than handed to a teardown actor (which a cancel racing
    # a slow batch on a loaded machine then waited for).
    job_id = make_started_job(60)
    ticks = iter(range(1_000))
    clock = types.SimpleNamespace(monotonic=lambda: float(next(ticks)))
    monkeypatch.setattr(revoke_module, "time", clock)  # the revoke's clock only
    with connection() as conn, conn.transaction():
        assert transition(conn, job_id, Status.CANCELING, {Status.STARTED}, "cancel")
    assert revoke(job_id, "cancel", until=0.5) == Status.REVOKED
    view = jobsys.get_job(job_id)
    assert (view.status, view.cancelled) == ("revoked", 60)
    assert_counters_match_ledger(job_id)


def test_the_teardown_a_cancel_sends_goes_on_past_the_chunks_the_cancel_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A clock that moves 0.1 s per look (the cancel's and the revoke's only):
    # the cancel's own revoke runs out of time after its first chunks.
    monkeypatch.setenv("JOBSYS_CANCEL_CHUNK_ROWS", "10")
    reset_settings()
    tasks = INLINE_REVOKE_CHUNKS * 10  # not more, or the cancel would not start
    job_id = make_started_job(tasks)
    ticks = iter(range(10_000))
    clock = types.SimpleNamespace(monotonic=lambda: next(ticks) / 10)
    monkeypatch.setattr(revoke_module, "time", clock)
    monkeypatch.setattr(cancel_module, "time", clock)
    starts: list[int] = []
    real_chunk = revoke_module._cancel_chunk

    def chunk(job: int, after: int, rows: int, until: float | None) -> Any:
        starts.append(after)
        return real_chunk(job, after, rows, until)

    monkeypatch.setattr(revoke_module, "_cancel_chunk", chunk)
    assert jobsys.cancel(job_id).status == "canceling"
    by_cancel = list(starts)
    (sent,) = [m for m in take_sent(QUEUE_OF[TEARDOWN_JOB], TEARDOWN_JOB) if m.args[0] == job_id]
    _, reached = sent.args
    assert by_cancel[0] == BEFORE_FIRST_TASK and reached > BEFORE_FIRST_TASK, (by_cancel, reached)
    view = jobsys.get_job(job_id)
    assert view.cancelled == reached + 1  # every task up to the one reached, no more
    starts.clear()
    teardown_job.fn(*sent.args)
    assert starts[0] == reached, starts  # not from the first task again
    view = jobsys.get_job(job_id)
    assert (view.status, view.cancelled) == ("revoked", tasks)
    assert_counters_match_ledger(job_id)
    monkeypatch.undo()
    reset_settings()


def test_a_cancel_leaves_a_job_of_many_chunks_pending_to_the_teardown_actor_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBSYS_CANCEL_CHUNK_ROWS", "10")
    reset_settings()
    tasks = INLINE_REVOKE_CHUNKS * 10 + 1
    job_id = make_started_job(tasks)
    assert jobsys.cancel(job_id).status == "canceling"
    view = jobsys.get_job(job_id)
    assert view.cancelled == 0 and not stream_exists(job_id)  # its work stopped all the same
    (sent,) = [m for m in take_sent(QUEUE_OF[TEARDOWN_JOB], TEARDOWN_JOB) if m.args[0] == job_id]
    teardown_job.fn(*sent.args)
    view = jobsys.get_job(job_id)
    assert (view.status, view.cancelled) == ("revoked", tasks)
    assert_counters_match_ledger(job_id)
    monkeypatch.undo()
    reset_settings()


# -- the CLI ------------------------------------------------------------------


def test_cli_cancel_json_says_changed_then_unchanged() -> None:
    job_id = make_started_job(5)
    runner = CliRunner()
    first = runner.invoke(cli, ["cancel", str(job_id), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {"job_id": job_id, "status": "revoked", "changed": True}
    second = runner.invoke(cli, ["cancel", str(job_id), "--json"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout) == {"job_id": job_id, "status": "revoked", "changed": False}


def test_cli_cancel_of_a_finished_job_exits_zero_and_says_nothing_changed() -> None:
    job_id = make_started_job(3)
    process_results.fn(job_id, pull_results(job_id, 3))
    result = CliRunner().invoke(cli, ["cancel", str(job_id)])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"job {job_id} is already success: nothing changed"
    run_teardown(job_id)


def test_cli_cancel_of_an_unknown_job_is_one_line_on_stderr_and_a_nonzero_exit() -> None:
    result = CliRunner().invoke(cli, ["cancel", "987654321", "--json"])
    assert result.exit_code != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["jobsys: job 987654321 not found"]
    assert "Traceback" not in result.output


def test_cli_cancel_of_a_non_numeric_job_id_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["cancel", "abc"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- with real processors -----------------------------------------------------


def test_a_cancelled_job_stops_its_processors_and_no_counter_moves_after_revoke(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    items = (json.dumps({"n": i, "sleep_ms": 20}) for i in range(2_000))
    system = LocalSystem(
        workers=1, processors=2, concurrency=4, log_dir=tmp_path_factory.mktemp("logs")
    )
    with system:
        job_id = jobsys.submit("echo", items).id
        _wait_for(lambda: jobsys.get_job(job_id).done >= 40, "some results", timeout=60)
        result = jobsys.cancel(job_id)
        assert (result.status, result.changed) == ("revoked", True)
        at_revoke = jobsys.get_job(job_id)
        # Processors may still be finishing tasks they had started, and their
        # batches still arrive; none of them may count.
        time.sleep(1.5)
        system.check_alive()
        after = jobsys.get_job(job_id)
    final = wait_until_final(job_id, timeout=5)
    assert final.status == "revoked"
    assert after.model_dump() == at_revoke.model_dump()
    assert at_revoke.done + at_revoke.failed + at_revoke.cancelled == 2_000
    assert at_revoke.cancelled > 0
    assert not stream_exists(job_id)
    assert status_events(job_id) == ["started", "canceling", "revoked"]
    assert_counters_match_ledger(job_id)
