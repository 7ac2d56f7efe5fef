"""A result counts even when its task's row was updated by another transaction
while the counting statement waited for the row's lock.

Found by the chaos suite (seed 728796): ten transient tasks ended `lost` with
fewer deliveries than their job's max_deliver. Their retry notes (a
processor's, written on the task's row) committed while the batch with the
next delivery's result waited for the row's lock. The counting statement
then updated the row by the ctid its lock returned: the newer version, which
that statement's snapshot (taken before the note committed) cannot see. The
update found nothing, nothing counted, the result was acked, and the
reconciler later found the task idle with nothing left to deliver. Rows are
updated by key, as before; the lock still looks each task up by key. Retry
notes lock their rows first and update them by ctid in a second statement,
whose snapshot sees the versions locked: shown the same way.

Real concurrency: a second connection holds the row's lock, updated, until
the counting statement is seen waiting for it in pg_stat_activity.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import jobsys
from jobsys.api.items import counted_items
from jobsys.bootstrap.start import run_bootstrap
from jobsys.pg.db import connect_direct, connection
from jobsys.recording.counting import record_results
from jobsys.worker.actors import note_retries, teardown_job
from tests.helpers import lock_waiters

TASKS = 10
TASK = 5
WAIT_S = 30.0
POLL_S = 0.05


def _while_row_locked(job_id: int, update: str, write: Callable[[], None]) -> None:
    """Run `write` in a thread while another connection holds the task's row
    locked with `update` uncommitted; commit once `write` waits for the lock."""
    with connect_direct(autocommit=False) as holder:
        holder.execute(
            f"UPDATE job_tasks SET {update} WHERE job_id = %s AND task_no = %s", (job_id, TASK)
        )
        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + WAIT_S
        while lock_waiters() == 0:
            assert time.monotonic() < deadline, "the write never waited for the lock"
            assert writer.is_alive(), "the write did not wait for the lock"
            time.sleep(POLL_S)
        holder.commit()
        writer.join(WAIT_S)


def test_a_result_counts_when_its_row_changed_while_the_batch_waited_for_its_lock() -> None:
    job = jobsys.submit("echo", counted_items(TASKS))
    assert run_bootstrap(job.id) == "published"
    moved: list[tuple[int, int]] = []

    def count() -> None:
        with connection() as conn:
            done, failed, _ = record_results(conn, job.id, [(TASK, "done", '{"n": 5}', None, 2)])
        moved.append((done, failed))

    try:
        # A retry note on the row, not yet committed: the row is locked.
        _while_row_locked(job.id, "last_error = 'noted'", count)
        assert moved == [(1, 0)], f"moved (done, failed): {moved}"
        view = jobsys.get_job(job.id)
        assert view.done == 1, view
        with connect_direct() as conn:
            row = conn.execute(
                "SELECT status, last_error FROM job_tasks WHERE job_id = %s AND task_no = %s",
                (job.id, TASK),
            ).fetchone()
        assert row == {"status": "done", "last_error": "noted"}, row
    finally:
        jobsys.cancel(job.id)
        teardown_job.fn(job.id)


def test_a_retry_note_is_written_when_its_row_changed_while_it_waited_for_the_lock() -> None:
    job = jobsys.submit("echo", counted_items(TASKS))
    assert run_bootstrap(job.id) == "published"
    retry_at = time.time() + 3600
    try:
        # Another writer of the row (a stream place), not yet committed.
        _while_row_locked(
            job.id,
            "stream_seq = 99",
            lambda: note_retries.fn(job.id, [[TASK, 2, retry_at, "boom"]]),
        )
        with connect_direct() as conn:
            row = conn.execute(
                "SELECT last_error, deliveries, stream_seq FROM job_tasks"
                " WHERE job_id = %s AND task_no = %s",
                (job.id, TASK),
            ).fetchone()
        assert row == {"last_error": "boom", "deliveries": 2, "stream_seq": 99}, row
    finally:
        jobsys.cancel(job.id)
        teardown_job.fn(job.id)
