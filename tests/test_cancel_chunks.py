"""Cancel of a big job in bounded work: pending tasks cancelled in chunks, each its
own transaction, counters = ledger at every read, nothing counted after revoked."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import jobsys
from jobsys.lifecycle.states import Status
from jobsys.pg.db import connect_direct
from jobsys.settings import reset_settings
from jobsys.worker.actors import process_results, teardown_job
from tests.helpers import make_started_job, pull_results

CHUNK = 1_000
TASKS = 12_000


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JOBSYS_CANCEL_CHUNK_ROWS", str(CHUNK))
    reset_settings()
    yield
    monkeypatch.delenv("JOBSYS_CANCEL_CHUNK_ROWS")
    reset_settings()


Read = tuple[str, dict[str, int], dict[str, int]]


def _snapshot(conn: psycopg.Connection[Any], job_id: int) -> Read:
    """The job's status, counters and ledger counts, read in one snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        job = conn.execute(
            "SELECT status, done_count, failed_count, lost_count, cancelled_count"
            " FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        rows = conn.execute(
            "SELECT status, count(*) AS n FROM job_tasks WHERE job_id = %s GROUP BY status",
            (job_id,),
        ).fetchall()
    assert job is not None
    by = {r["status"]: r["n"] for r in rows}
    kept = {k: job[f"{k}_count"] for k in ("done", "failed", "lost", "cancelled")}
    counted = {k: by.get(k, 0) for k in kept}
    return job["status"], kept, counted


def test_a_big_cancel_runs_in_chunks_and_counts_stay_exact_at_every_read(
    small_chunks: None,
) -> None:
    job_id = make_started_job(TASKS)
    process_results.fn(job_id, pull_results(job_id, 30))
    # Results a processor holds when the cancel comes: sent during the cancel.
    late = pull_results(job_id, 200)

    reads: list[Read] = []
    stop = threading.Event()

    def watch() -> None:
        with connect_direct() as conn:
            while not stop.is_set():
                reads.append(_snapshot(conn, job_id))

    watcher = threading.Thread(target=watch)
    late_sender = threading.Thread(target=process_results.fn, args=(job_id, late))
    watcher.start()
    late_sender.start()
    result = jobsys.cancel(job_id)
    late_sender.join(60)
    if result.status == Status.CANCELING:
        # The cancel returned before its chunks were done: the worker finishes.
        teardown_job.fn(job_id)
    with connect_direct() as conn:
        for _ in range(20):  # reads after revoked: nothing moves any more
            reads.append(_snapshot(conn, job_id))
    stop.set()
    watcher.join(60)

    wrong = [(s, kept, counted) for s, kept, counted in reads if kept != counted]
    assert wrong == [], f"counters differ from the ledger at {len(wrong)} reads: {wrong[:3]}"
    final = [r for r in reads if r[0] == Status.REVOKED]
    assert final, "the job never read revoked"
    assert all(r[1] == final[0][1] for r in final), "a counter moved after revoked"
    view = jobsys.get_job(job_id)
    assert view.status == "revoked"
    assert view.done + view.cancelled == TASKS and view.pending == 0

    # Rows changed by one transaction share its xmin: no transaction of the
    # cancel may have moved more than a chunk of them.
    with connect_direct() as conn:
        sizes = conn.execute(
            "SELECT xmin::text AS xid, count(*) AS n FROM job_tasks"
            " WHERE job_id = %s AND status = 'cancelled' GROUP BY xmin ORDER BY n DESC",
            (job_id,),
        ).fetchall()
    assert sum(r["n"] for r in sizes) == view.cancelled
    assert sizes[0]["n"] <= CHUNK, f"one transaction cancelled {sizes[0]['n']} tasks"
