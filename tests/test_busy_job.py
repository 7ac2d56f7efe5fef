"""A job whose row another session holds: `jobsys cancel` and `jobsys set` wait a
bounded time, then say who holds it and change nothing.

Regression: a worker frozen in the middle of recording a result batch (a
paused VM, SIGSTOP, a debugger) keeps its transaction open and the job's row
locked; `jobsys cancel` and `jobsys set` then waited for it with no end and
no word. Here the worker is a real one, stopped with SIGSTOP at the instant
its batch's counters are written and not yet committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobsys
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connect_direct, connection
from jobsys.pg.queries import Q
from jobsys.settings import reset_settings
from tests.helpers import assert_counters_match_ledger, freeze_at_pause, make_started_job

# The wait the commands are given here; a hang is caught long after it.
LOCK_WAIT_S = 1.0
COMMAND_TIMEOUT_S = 60
PAUSE_WITHIN_S = 120


def _jobsys(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBSYS_LOCK_WAIT_S": str(LOCK_WAIT_S)}
    return subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args],
        env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip


def _holder_of(job_id: int) -> tuple[int, str]:
    """The Postgres session whose open transaction wrote the job's row, and its
    name: the row's xmax is its transaction id, or a multixact of which it is
    the one member that blocks writes (another transaction's foreign-key
    check -- an event of the job written meanwhile -- shares the row too)."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT a.pid, a.application_name FROM jobs j, pg_stat_activity a "
            "WHERE j.id = %(id)s AND a.backend_xid = j.xmax",
            {"id": job_id},
        ).fetchall()
        if not rows:
            rows = conn.execute(Q.row_holders_multi, {"job_id": job_id}).fetchall()
    assert len(rows) == 1, rows
    return int(rows[0]["pid"]), rows[0]["application_name"]


def test_cancel_and_set_of_a_job_a_frozen_worker_holds_fail_fast_naming_the_holder(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "paused"
    # Submitted first, so the worker pauses in this job's batch only: the
    # test database may hold other tests' jobs that it serves too.
    job = jobsys.submit("echo", [{"i": i} for i in range(5)])
    env = {"JOBSYS_PAUSE_AT": "in_results_transaction", "JOBSYS_PAUSE_FILE": str(marker),
           "JOBSYS_PAUSE_JOB": str(job.id)}  # fmt: skip
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path, env=env) as system:
        frozen = system.workers[0]
        freeze_at_pause(marker, frozen, PAUSE_WITHIN_S)
        holder, name = _holder_of(job.id)
        # The frozen worker's session (it may have others open, in other threads).
        assert name == f"jobsys worker {frozen.pid}"

        for args in (["cancel", str(job.id)], ["set", str(job.id), "--priority", "3"]):
            started = time.monotonic()
            out = _jobsys(*args)
            took = time.monotonic() - started
            assert out.returncode != 0, out
            (line,) = out.stderr.splitlines()
            assert f"job {job.id} is busy" in line, line
            assert f"pid {holder}" in line and f"jobsys worker {frozen.pid}" in line, line
            assert "nothing was changed" in line, line
            assert f"pg_terminate_backend({holder})" in line, line
            assert took < COMMAND_TIMEOUT_S
        view = jobsys.get_job(job.id)
        assert (view.status, view.priority) == ("started", 0)

        # The frozen worker dies: its session ends, its batch was never
        # committed, and the cancel goes through.
        os.kill(frozen.pid, signal.SIGKILL)
        frozen.wait()
        system.workers.remove(frozen)
        out = _jobsys("cancel", str(job.id), "--json")
        assert out.returncode == 0, out
        end = time.monotonic() + PAUSE_WITHIN_S
        while jobsys.get_job(job.id).status != "revoked":
            assert time.monotonic() < end, jobsys.get_job(job.id)
            time.sleep(0.1)
    assert_counters_match_ledger(job.id)


def test_a_row_locked_by_another_session_is_named_by_its_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = make_started_job(3)
    monkeypatch.setenv("JOBSYS_LOCK_WAIT_S", str(LOCK_WAIT_S))
    reset_settings()
    with connect_direct(autocommit=False) as other:
        # An operator's psql, say: SELECT ... FOR UPDATE, then nothing.
        other.execute("SELECT id FROM jobs WHERE id = %(id)s FOR UPDATE", {"id": job_id})
        pid = other.info.backend_pid
        with pytest.raises(jobsys.JobBusy) as busy:
            jobsys.cancel(job_id)
        with pytest.raises(jobsys.JobBusy):
            jobsys.set_share(job_id, weight=2)
        other.rollback()
    assert f"it may be held by pid {pid} (" in str(busy.value)
    assert f"pg_terminate_backend({pid})" in str(busy.value)
    assert jobsys.get_job(job_id).status == "started"
    monkeypatch.undo()
    reset_settings()
    assert jobsys.cancel(job_id).status == "revoked"


def test_a_row_two_sessions_lock_is_said_to_be_held_by_the_one_that_blocks_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A write's row lock and another transaction's KEY SHARE (what a foreign
    # key check takes, e.g. an event of the job inserted meanwhile) make the
    # row's xmax a multixact. The error used to fall back to every long
    # transaction and name the KEY SHARE holder too, which blocks nothing.
    job_id = make_started_job(3)
    monkeypatch.setenv("JOBSYS_LOCK_WAIT_S", str(LOCK_WAIT_S))
    reset_settings()
    with connect_direct(autocommit=False) as writer, connect_direct(autocommit=False) as checker:
        writer.execute("SELECT id FROM jobs WHERE id = %(id)s FOR NO KEY UPDATE", {"id": job_id})
        checker.execute("SELECT id FROM jobs WHERE id = %(id)s FOR KEY SHARE", {"id": job_id})
        holder, sharer = writer.info.backend_pid, checker.info.backend_pid
        with pytest.raises(jobsys.JobBusy) as busy:
            jobsys.cancel(job_id)
        writer.rollback()
        checker.rollback()
    assert f"it may be held by pid {holder} (" in str(busy.value)
    assert f"pid {sharer}" not in str(busy.value)
    monkeypatch.undo()
    reset_settings()
    assert jobsys.cancel(job_id).status == "revoked"
