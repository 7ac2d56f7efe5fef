"""A worker frozen in the middle of its work on a job does not stall the job.

Regression: a worker frozen inside its result transaction (a paused VM,
SIGSTOP, a debugger) kept the job's rows locked for as long as it stayed
frozen. The processor sent the batch again (JOBSYS_RESULT_RESEND_S), another
worker took it and waited on those rows with no end: the job never became
final, and every resend held one more of that worker's threads. Postgres now
ends a session left idle inside a transaction for JOBSYS_IDLE_TRANSACTION_S,
so the rows are free again and the batch is recorded, once, by the worker
that is alive.

Regression: a worker frozen in the middle of a bootstrap kept the job's
bootstrap lock (an open transaction on a session of its own, which the idle
limit above spares) for as long as it stayed frozen. The reconciler saw the
bootstrap stalled and sent it again, and every run of it found the lock
taken: the job's tasks were never all published, and it never finished.
Postgres now ends a lock's session left idle for JOBSYS_LOCK_IDLE_S; a live
fill touches it between chunks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jobsys
from jobsys.models import JobView
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.reconciler import reconcile_pass
from tests.helpers import (
    assert_counters_match_ledger,
    fast,
    freeze_at_pause,
    messages_in_stream,
)

TASKS = 5
IDLE_TRANSACTION_S = "2"
LOCK_IDLE_S = "2"
RESEND_S = "1"
# How long the job may take once the frozen session is ended: far above what
# it needs (a few seconds), far below a frozen worker's "for ever".
FINAL_WITHIN_S = 90
PAUSE_WITHIN_S = 120


@contextlib.contextmanager
def frozen_worker(
    tmp_path: Path, job_id: int, point: str, processors: int = 1, **settings: str
) -> Iterator[int]:
    """A worker SIGSTOPped at pause `point` in job `job_id`'s work, then a second
    worker that does not pause; yields the frozen one's pid, SIGKILLs it after.

    The job is submitted before, so the worker pauses in its work only: the
    test database may hold other tests' jobs that it serves too."""
    marker = tmp_path / "paused"
    env = {"JOBSYS_PAUSE_AT": point, "JOBSYS_PAUSE_FILE": str(marker),
           "JOBSYS_PAUSE_JOB": str(job_id), **settings}  # fmt: skip
    with LocalSystem(workers=1, processors=processors, log_dir=tmp_path, env=env) as system:
        frozen = system.workers[0]
        freeze_at_pause(marker, frozen, PAUSE_WITHIN_S)
        try:
            del system.env["JOBSYS_PAUSE_AT"]
            system.start_worker()
            yield frozen.pid
        finally:
            os.kill(frozen.pid, signal.SIGKILL)
        frozen.wait()
        system.workers.remove(frozen)


def until(done: Callable[[], bool], why: str) -> None:
    """Until `done()` is true, FINAL_WITHIN_S at most."""
    end = time.monotonic() + FINAL_WITHIN_S
    while not done():
        assert time.monotonic() < end, why
        time.sleep(0.3)


def final_within(job_id: int, why: Callable[[JobView], str], each: Callable[[], None]) -> JobView:
    """The job once it left `started` (FINAL_WITHIN_S at most), calling `each` between looks."""
    end = time.monotonic() + FINAL_WITHIN_S
    while (view := jobsys.get_job(job_id)).status == "started":
        assert time.monotonic() < end, why(view)
        each()
    return view


def test_a_job_a_frozen_worker_holds_is_finished_by_another_worker(tmp_path: Path) -> None:
    job = jobsys.submit("echo", [{"i": i} for i in range(TASKS)])
    settings = {"JOBSYS_IDLE_TRANSACTION_S": IDLE_TRANSACTION_S, "JOBSYS_RESULT_RESEND_S": RESEND_S}
    with frozen_worker(tmp_path, job.id, "in_results_transaction", **settings) as frozen:
        # The second worker takes the resent batch.
        view = final_within(
            job.id,
            lambda v: (
                f"job still {v.status} {FINAL_WITHIN_S} s after its worker froze: "
                "the frozen worker's transaction holds its rows"
            ),
            lambda: time.sleep(0.2),
        )
        assert (view.status, view.done) == ("success", TASKS)
        assert_counters_match_ledger(job.id)
        # Postgres ended the frozen worker's session inside its transaction;
        # its other sessions (idle, no transaction) may stay.
        with connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE application_name = %(name)s AND state LIKE 'idle in transaction%%'",
                {"name": f"jobsys worker {frozen}"},
            ).fetchone()
        assert row is not None and row["n"] == 0
    view = jobsys.get_job(job.id)
    assert (view.status, view.done, view.failed) == ("success", TASKS, 0)
    assert_counters_match_ledger(job.id)


def test_a_job_whose_bootstrap_a_frozen_worker_holds_is_bootstrapped_by_another(
    tmp_path: Path,
) -> None:
    job = jobsys.submit("echo", [{"i": i} for i in range(TASKS)])
    actions: list[str] = []

    def reconcile() -> None:
        # The reconciler finds the bootstrap stalled and sends it again.
        report = reconcile_pass(fast())
        actions.extend(f.action for f in report.findings if f.job_id == job.id)
        time.sleep(0.5)

    with frozen_worker(tmp_path, job.id, "between_fill_chunks", JOBSYS_LOCK_IDLE_S=LOCK_IDLE_S):
        # Frozen with the job started, its stream made, nothing published.
        at_freeze = jobsys.get_job(job.id)
        assert (at_freeze.status, at_freeze.published) == ("started", 0)
        view = final_within(
            job.id,
            lambda v: (
                f"job still {v.status} with {v.published} of {TASKS} published "
                f"{FINAL_WITHIN_S} s after its bootstrap froze (reconciler: {actions[-5:]})"
            ),
            reconcile,
        )
        assert (view.status, view.done, view.published) == ("success", TASKS, TASKS)
        assert "enqueued_bootstrap" in actions
        assert_counters_match_ledger(job.id)
    view = jobsys.get_job(job.id)
    assert (view.status, view.done, view.failed) == ("success", TASKS, 0)
    assert_counters_match_ledger(job.id)


def test_a_frozen_fill_that_wakes_after_its_lock_was_taken_stops_and_publishes_nothing_twice(
    tmp_path: Path,
) -> None:
    job = jobsys.submit("echo", [{"i": i} for i in range(TASKS)])
    # No processor yet: the tasks stay pending, so the woken fill has work left.
    with frozen_worker(
        tmp_path, job.id, "between_fill_chunks", processors=0, JOBSYS_LOCK_IDLE_S=LOCK_IDLE_S
    ) as frozen:
        # Another fill (the second worker's, sent by the reconciler) publishes it all.
        until(
            lambda: bool(reconcile_pass(fast())) and jobsys.get_job(job.id).published == TASKS,
            "the second worker never published the job",
        )
        # The frozen worker wakes and goes on from its pause.
        os.kill(frozen, signal.SIGCONT)
        (tmp_path / "paused").unlink()
        logs = list(tmp_path.glob("worker-*.log"))
        until(
            lambda: any("lost the lock" in p.read_text() for p in logs),
            "the woken fill did not find its lock gone",
        )
        # What it published at most (its chunk in flight) went into the duplicate
        # window: the stream holds each task once.
        assert sorted(t for t, _ in messages_in_stream(job.id)) == list(range(TASKS))
        view = jobsys.get_job(job.id)
        assert (view.status, view.published, view.done) == ("started", TASKS, 0)
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path / "after") as system:
        view = final_within(job.id, lambda v: f"job still {v.status}", lambda: time.sleep(0.2))
        system.check_alive()
    assert (view.status, view.done, view.failed) == ("success", TASKS, 0)
    assert_counters_match_ledger(job.id)
