"""Waiting for a job wakes when it goes final, not at the next poll
(jobsys.api.read, jobsys.pg.finals).

`Job.wait()`, `jobsys watch` and the demo polled every 250 ms: a
1-task job final 43 ms after its submit was seen up to 250 ms later. The
guarded transition now announces every move to a final status on a Postgres
channel, and waiters listen on one connection per process; the poll stays,
as the fallback when no notice comes (a pooler that drops LISTEN, a lost
connection).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import threading
import time

import pytest

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.lifecycle.states import FINALIZABLE, Status, transition
from jobsys.models import JobView
from jobsys.pg.db import close_pool, connection
from jobsys.settings import reset_settings

# The waiters' poll: far longer than the bound below, so only a notice can
# wake them in time.
LONG_POLL_S = 120.0
# Liveness bound (not a speed target): a woken waiter returns well within it.
WOKEN_WITHIN_S = 15.0
# A poll far longer than SETTLE_S and far shorter than WOKEN_WITHIN_S.
OFF_POLL_S = 3.0
# Long enough for the waiters to be waiting (their first read done).
SETTLE_S = 0.5


def _waiter(job_id: int, out: list[JobView]) -> threading.Thread:
    def wait() -> None:
        out.append(wait_until_final(job_id, timeout=LONG_POLL_S * 2, poll_s=LONG_POLL_S))

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def _revoke(job_id: int) -> None:
    with connection() as conn, conn.transaction():
        assert transition(conn, job_id, Status.REVOKED, FINALIZABLE, "test") is not None


def test_waiters_wake_when_their_job_goes_final_and_not_when_another_does() -> None:
    # No worker runs: the jobs stay queued until the test moves them.
    first = jobsys.submit("echo", [{"i": 0}])
    second = jobsys.submit("echo", [{"i": 0}])
    got_first: list[JobView] = []
    got_second: list[JobView] = []
    waiters = [_waiter(first.id, got_first), _waiter(second.id, got_second)]
    time.sleep(SETTLE_S)

    _revoke(first.id)
    waiters[0].join(WOKEN_WITHIN_S)
    assert got_first and got_first[0].status == "revoked", "not woken by its job's notice"
    time.sleep(SETTLE_S)
    assert not got_second, "returned while its job was still queued"

    _revoke(second.id)
    waiters[1].join(WOKEN_WITHIN_S)
    assert got_second and got_second[0].status == "revoked"


def test_with_listening_off_a_waiter_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSYS_DB_LISTEN", "false")
    reset_settings()
    try:
        job = jobsys.submit("echo", [{"i": 0}])
        got: list[JobView] = []
        thread = threading.Thread(
            target=lambda: got.append(wait_until_final(job.id, timeout=60, poll_s=OFF_POLL_S)),
            daemon=True,
        )
        thread.start()
        time.sleep(SETTLE_S)
        _revoke(job.id)
        time.sleep(SETTLE_S)
        assert not got, "woken by a notice with JOBSYS_DB_LISTEN=false"
        thread.join(WOKEN_WITHIN_S)
        assert got and got[0].status == "revoked"
    finally:
        monkeypatch.undo()
        reset_settings()


def _wait_in_child(job_id: int, out: multiprocessing.queues.Queue[str]) -> None:
    close_pool()  # the parent's connections are the parent's
    out.put(wait_until_final(job_id, timeout=LONG_POLL_S * 2, poll_s=LONG_POLL_S).status)


def test_a_forked_child_listens_for_itself() -> None:
    # The parent listens first; a child forked then has none of its threads.
    job = jobsys.submit("echo", [{"i": 0}])
    other = jobsys.submit("echo", [{"i": 0}])
    got: list[JobView] = []
    parent_waiter = _waiter(other.id, got)
    time.sleep(SETTLE_S)
    fork = multiprocessing.get_context("fork")
    out: multiprocessing.queues.Queue[str] = fork.Queue()
    child = fork.Process(target=_wait_in_child, args=(job.id, out), daemon=True)
    child.start()
    try:
        time.sleep(SETTLE_S * 2)  # the child is waiting
        _revoke(job.id)
        assert out.get(timeout=WOKEN_WITHIN_S) == "revoked"
    finally:
        child.kill()
        child.join(10)
        _revoke(other.id)
        parent_waiter.join(WOKEN_WITHIN_S)
