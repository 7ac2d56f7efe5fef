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

import jobsys
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from tests.helpers import assert_counters_match_ledger

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


def _backend_of(pid: int) -> int:
    """The Postgres session the worker process `pid` holds open in a transaction."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' AND application_name = %(name)s",
            {"name": f"jobsys worker {pid}"},
        ).fetchall()
    assert len(rows) == 1, rows
    return int(rows[0]["pid"])


def test_cancel_and_set_of_a_job_a_frozen_worker_holds_fail_fast_naming_the_holder(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "paused"
    env = {"JOBSYS_PAUSE_AT": "in_results_transaction", "JOBSYS_PAUSE_FILE": str(marker)}
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path, env=env) as system:
        job = jobsys.submit("echo", [{"i": i} for i in range(5)])
        end = time.monotonic() + PAUSE_WITHIN_S
        while not marker.exists():
            assert time.monotonic() < end, "the worker never reached the pause point"
            time.sleep(0.1)
        frozen = system.workers[0]
        assert int(marker.read_text()) == frozen.pid
        os.kill(frozen.pid, signal.SIGSTOP)
        holder = _backend_of(frozen.pid)

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
