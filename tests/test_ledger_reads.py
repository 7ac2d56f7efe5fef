"""A big job's ledger is read a bounded number of times per task, not once per
chunk or batch: the fill of its stream (jobsys.bootstrap.fill), the chunks
of a cancel (jobsys.lifecycle.revoke) and the counting of result batches
(jobsys.recording.counting).

Issue 26: a 1,000,000-task job ran at 0.74-0.77x bare NATS on a slow day,
slower per task than a 20,000-task one, with Postgres at ~47 us of CPU per
task against ~25. `pg_stat_statements` during a 1M run split it: the fill's
read of its next 5,000 pending tasks took 36.7 s of 208 calls, 176 ms each.
Its range ran from the chunk's first task to the job's last; a job's rows
are new, so the planner has no statistics for them, and once the ledger
holds a few hundred thousand rows it chose a bitmap scan of that whole
range plus a sort, every chunk: 1M tasks read ~100M rows. A cancel's chunks
(issue 20: cancel in bounded work) read the same way. Every big job of a
deployment whose ledger has grown did this. Each statement now reads one
chunk's span of task numbers, so the plan cannot matter.

The next statement by time was worse: the counting of a result batch
(51.4 s of 1,184 calls) locked its tasks by `task_no = ANY(...)`, which the
planner served by reading every row of the job through the key's job_id
prefix and filtering, at any ledger size from ~20,000 rows: each batch of
1,000 results read the whole job. It now looks each task up by its key. So
do a processor's retry notes and the fill's stream places its PubAcks
contradict: their rows are locked by key first, then updated by ctid in a
second statement (whose snapshot sees the versions locked).

Shown by the table's own counter of rows fetched through its indexes, with
another job's 600,000 rows in the ledger (queued, never started; cancelled,
pruned and vacuumed away at the end).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

import jobsys
from jobsys.api.items import counted_items
from jobsys.bootstrap.fill import PUBLISH_CHUNK
from jobsys.bootstrap.start import run_bootstrap
from jobsys.dramatiq.messages import QUEUE_OF, TEARDOWN_JOB
from jobsys.lifecycle.retention import prune_job
from jobsys.pg.db import close_pool, connect_direct, connection
from jobsys.pg.queries import Q
from jobsys.recording.counting import ResultRow, lock_listed_tasks, record_results
from jobsys.settings import reset_settings
from jobsys.worker.actors import note_retries, teardown_job
from tests.helpers import take_sent

# Rows of another job in the ledger: the old plan flips to the whole-range
# scan somewhere between 300,000 and 600,000 rows in the table.
BALLAST = 600_000
CHUNKS = 8
TASKS = CHUNKS * PUBLISH_CHUNK
# The fill: each pending row once, plus the statements around the chunks
# (binding, resume points). Reading to the job's end fetched 4.5 per task.
MAX_FILL_FETCHED_PER_TASK = 1.5
# A cancel in chunks of CANCEL_CHUNK rows: each row read for its chunk's span,
# again as it moves, and once more by the last transaction's sweep. Reading
# to the job's end fetched 12.5 per task.
CANCEL_CHUNK = 2_000
MAX_CANCEL_FETCHED_PER_TASK = 4.0
# Counting: each task looked up once to lock it (its row is then updated by
# its ctid). Reading the job for every batch fetched 40 per task.
RESULT_BATCH = 1_000
MAX_COUNT_FETCHED_PER_TASK = 2.0
# A list of tasks given to the other statements: each looked up once or twice.
LISTED = 1_000
MAX_LISTED_FETCHED_PER_TASK = 3.0
STATS_WAIT_S = 15.0
STATS_POLL_S = 0.3


def _fetched_settled() -> int:
    """job_tasks' rows fetched through indexes, once every pooled backend has
    reported: the pool is closed (a backend reports its counts as it exits)
    and the counter read until it stops moving."""
    close_pool()
    deadline = time.monotonic() + STATS_WAIT_S
    last = -1
    with connect_direct() as conn:
        while True:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT idx_tup_fetch FROM pg_stat_user_tables WHERE relname = 'job_tasks'"
            ).fetchone()
            assert row is not None
            now = int(row["idx_tup_fetch"] or 0)
            if now == last or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(STATS_POLL_S)


def _cancel(job: jobsys.Job) -> None:
    if jobsys.cancel(job.id).status == "canceling":
        # The teardown message the cancel sent, run here (the test runs no
        # worker): it goes on from where the cancel's own revoke stopped.
        sent = [m for m in take_sent(QUEUE_OF[TEARDOWN_JOB], TEARDOWN_JOB) if m.args[0] == job.id]
        assert len(sent) == 1, sent
        teardown_job.fn(*sent[0].args)
    assert jobsys.get_job(job.id).status == "revoked"


@pytest.fixture(scope="module")
def big_ledger(services: str) -> Iterator[None]:
    """Another job's rows in the ledger; removed afterwards, so that the tests
    after these see the ledger as it was."""
    ballast = jobsys.submit("echo", counted_items(BALLAST))
    yield
    _cancel(ballast)
    assert prune_job(ballast.id, older_than_s=0) is not None
    with connect_direct() as conn:
        conn.execute("VACUUM job_tasks")


@pytest.fixture
def filled(big_ledger: None) -> Iterator[tuple[jobsys.Job, int]]:
    """A job of CHUNKS chunks, its stream filled here; and the rows the fill fetched."""
    job = jobsys.submit("echo", counted_items(TASKS))
    before = _fetched_settled()
    try:
        assert run_bootstrap(job.id) == "published"
        yield job, _fetched_settled() - before
    finally:
        if jobsys.get_job(job.id).status in ("queued", "started"):
            _cancel(job)  # its stream deleted too
        else:
            teardown_job.fn(job.id)  # a final job's stream deleted


def test_a_big_jobs_fill_reads_each_ledger_row_about_once(filled: tuple[jobsys.Job, int]) -> None:
    _, fetched = filled
    assert fetched >= TASKS, f"every pending row is read: {fetched:,} of {TASKS:,}"
    assert fetched <= MAX_FILL_FETCHED_PER_TASK * TASKS, (
        f"the fill fetched {fetched:,} ledger rows for {TASKS:,} tasks "
        f"({fetched / TASKS:.1f} per task)"
    )


def test_a_big_jobs_cancel_reads_each_ledger_row_a_bounded_number_of_times(
    filled: tuple[jobsys.Job, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = filled
    monkeypatch.setenv("JOBSYS_CANCEL_CHUNK_ROWS", str(CANCEL_CHUNK))
    reset_settings()
    try:
        before = _fetched_settled()
        _cancel(job)
        fetched = _fetched_settled() - before
    finally:
        monkeypatch.undo()
        reset_settings()
    view = jobsys.get_job(job.id)
    assert view.cancelled == TASKS, view
    assert fetched <= MAX_CANCEL_FETCHED_PER_TASK * TASKS, (
        f"the cancel fetched {fetched:,} ledger rows for {TASKS:,} tasks "
        f"({fetched / TASKS:.1f} per task)"
    )


def test_counting_a_big_jobs_results_reads_each_ledger_row_a_bounded_number_of_times(
    filled: tuple[jobsys.Job, int],
) -> None:
    job, _ = filled
    before = _fetched_settled()
    for lo in range(0, TASKS, RESULT_BATCH):
        rows: list[ResultRow] = [
            (task, "done", f'{{"n": {task}}}', None, 1) for task in range(lo, lo + RESULT_BATCH)
        ]
        with connection() as conn:
            record_results(conn, job.id, rows)
    fetched = _fetched_settled() - before
    view = jobsys.get_job(job.id)
    assert (view.status, view.done) == ("success", TASKS), view
    assert fetched <= MAX_COUNT_FETCHED_PER_TASK * TASKS, (
        f"counting fetched {fetched:,} ledger rows for {TASKS:,} results "
        f"({fetched / TASKS:.1f} per task)"
    )


def _note_retries(job_id: int, listed: list[int]) -> str:
    retry_at = time.time() + 3600
    note_retries.fn(job_id, [[task, 2, retry_at, "boom"] for task in listed])
    return "last_error = 'boom' AND deliveries = 2"


def _record_places(job_id: int, listed: list[int]) -> str:
    # Places its PubAcks contradict (a republished chunk).
    with connection() as conn, conn.transaction():
        conn.execute(
            Q.record_stream_seqs,
            {"job_id": job_id, "task_nos": listed, "seqs": [t + 7 for t in listed],
             "rows": lock_listed_tasks(conn, job_id, listed)},
        )  # fmt: skip
    return "stream_seq = task_no + 7"


@pytest.mark.parametrize("statement", [_note_retries, _record_places])
def test_a_statement_given_a_list_of_a_big_jobs_tasks_reads_only_those(
    filled: tuple[jobsys.Job, int], statement: Callable[[int, list[int]], str]
) -> None:
    job, _ = filled
    listed = list(range(TASKS // 2, TASKS // 2 + LISTED))
    before = _fetched_settled()
    wrote = statement(job.id, listed)
    fetched = _fetched_settled() - before
    with connect_direct() as conn:
        row = conn.execute(
            f"SELECT count(*) AS n FROM job_tasks WHERE job_id = %s AND {wrote}", (job.id,)
        ).fetchone()
    assert row is not None and row["n"] == LISTED, (wrote, row)
    assert fetched <= MAX_LISTED_FETCHED_PER_TASK * LISTED, (
        f"{fetched:,} ledger rows fetched for {LISTED:,} tasks listed"
    )
