"""A per-job lock is kept by a holder that works and taken from one that stopped.

A holder that stops (a frozen process) must not keep its job's lock for as
long as it stays stopped: Postgres ends the lock's session once it idles for
JOBSYS_LOCK_IDLE_S. A holder that is still at it says so with `keep_locks()`
between steps and keeps the lock however long its work takes. The frozen
worker itself, with real signals, is tests/test_frozen_worker.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from jobsys.pg.db import connection
from jobsys.pg.locks import Lock, LockLost, is_locked, job_lock, keep_locks, keep_within_s
from jobsys.reconciler import passes, reconcile_pass
from jobsys.settings import reset_settings
from tests.helpers import assert_counters_match_ledger, fast, make_started_job

LOCK_IDLE_S = 1.0
JOB = 990_001  # no job has it: the locks are by name only
KEEP_EVERY_S = 0.1


@pytest.fixture
def short_lock_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JOBSYS_LOCK_IDLE_S", str(LOCK_IDLE_S))
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_a_holder_that_keeps_its_lock_holds_it_past_the_idle_limit(short_lock_limit: None) -> None:
    with job_lock(Lock.BOOTSTRAP, JOB) as held:
        assert held
        end = time.monotonic() + 4 * LOCK_IDLE_S
        while time.monotonic() < end:
            keep_locks()
            time.sleep(KEEP_EVERY_S)
            assert is_locked(Lock.BOOTSTRAP, JOB), "a holder that kept its lock lost it"
    assert not is_locked(Lock.BOOTSTRAP, JOB)


def test_a_holder_that_stopped_past_the_idle_limit_loses_its_lock_and_is_told(
    short_lock_limit: None,
) -> None:
    with pytest.raises(LockLost, match="JOBSYS_LOCK_IDLE_S"), job_lock(Lock.BOOTSTRAP, JOB) as held:
        assert held
        time.sleep(2.5 * LOCK_IDLE_S)  # stopped: no keep_locks()
        # Another holder can take it now.
        assert not is_locked(Lock.BOOTSTRAP, JOB)
        with job_lock(Lock.BOOTSTRAP, JOB) as other:
            assert other
        keep_locks()
    # Its lock connection went back to the pool broken; the next lock works.
    with job_lock(Lock.BOOTSTRAP, JOB) as held:
        assert held


def test_nested_locks_are_kept_together_and_the_lost_one_is_named(
    short_lock_limit: None,
) -> None:
    with job_lock(Lock.RECONCILE, JOB) as outer:
        assert outer
        with job_lock(Lock.BOOTSTRAP, JOB) as inner:
            assert inner
            end = time.monotonic() + 3 * LOCK_IDLE_S
            while time.monotonic() < end:
                keep_locks()
                time.sleep(KEEP_EVERY_S)
            assert is_locked(Lock.RECONCILE, JOB) and is_locked(Lock.BOOTSTRAP, JOB)
        # Only the outer one is held now; left idle, it alone is lost.
        with pytest.raises(LockLost, match=f"reconcile:{JOB}"):
            time.sleep(2.5 * LOCK_IDLE_S)
            keep_locks()


def test_no_limit_means_a_lock_is_never_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSYS_LOCK_IDLE_S", "0")
    reset_settings()
    try:
        assert keep_within_s() == float("inf")
        with job_lock(Lock.BOOTSTRAP, JOB) as held:
            assert held
            time.sleep(1.5)  # past what a 1 s limit would allow
            keep_locks()  # touches nothing, raises nothing
            assert is_locked(Lock.BOOTSTRAP, JOB)
    finally:
        monkeypatch.undo()
        reset_settings()


def test_a_reconcile_pass_that_lost_a_job_lock_goes_on_with_the_next_job(
    short_lock_limit: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two jobs whose counters drifted: the pass repairs each under its lock.
    jobs = [make_started_job(3), make_started_job(3)]
    with connection() as conn:
        conn.execute("UPDATE jobs SET done_count = 1 WHERE id = ANY(%s)", (jobs,))
    real = passes._reconcile_job
    stopped: list[int] = []

    def stops_on_the_first(job_id: int, *args: object) -> object:
        if not stopped:
            stopped.append(job_id)
            time.sleep(2.5 * LOCK_IDLE_S)  # stopped past the limit, holding its lock
        return real(job_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(passes, "_reconcile_job", stops_on_the_first)
    found = reconcile_pass(fast())
    repaired = {f.job_id for f in found.findings if f.kind == "counters_drift"}
    assert set(jobs) <= repaired, found.findings
    for job_id in jobs:
        assert_counters_match_ledger(job_id)
