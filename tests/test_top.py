"""`jobsys top --once` prints one frame: each active job with its progress,
counts, rate, ETA, age and the reconciler's latest finding, read in one query."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import jobsys
from jobsys.lifecycle.states import Status, transition
from jobsys.ops.monitor import active_jobs
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.recording.counting import record_results

TOTAL = 1_000


def run_top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobsys.cli", "top", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_top_once_shows_each_active_job_in_one_frame() -> None:
    items = (json.dumps({"n": i}) for i in range(TOTAL))
    job = jobsys.submit("echo", items, name="top-check")
    job_id = job.id
    try:
        with connection() as conn:
            transition(conn, job_id, Status.STARTED, {Status.QUEUED}, "test")
            # 250 done and 50 failed, recorded as result batches are.
            rows = [(n, "done", "{}", None, 1) for n in range(250)]
            rows += [(n, "failed", None, "boom", 1) for n in range(250, 300)]
            record_results(conn, job_id, rows)
            run = conn.execute(Q.insert_reconcile_run, {"trigger": "test"}).fetchone()
            assert run is not None
            conn.execute(Q.record_reconcile_finding, {
                "run_id": run["id"], "job_id": job_id, "kind": "waiting", "action": "none",
                "reason": None, "detail": "{}"})  # fmt: skip

        snapshot = active_jobs()
        mine = next(j for j in snapshot.jobs if j.job_id == job_id)
        assert (mine.done, mine.failed, mine.pending) == (250, 50, 700)
        assert mine.rate > 0 and mine.eta_s is not None
        assert mine.finding == "waiting"

        proc = run_top("--once", "--width", "220")
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert out.count("jobsys top") == 1  # one frame
        assert "\x1b[?1049h" not in out  # no alternate screen when printing once
        assert f"{snapshot.active} active job(s)" in out
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(str(job_id)))
        for cell in ("top-check", "started", "30.0%", "250", "50", "1,000", "waiting: none"):
            assert cell in line, (cell, line)
        assert "━" in line  # the progress bar
    finally:
        jobsys.cancel(job_id)

    after = run_top("--once", "--width", "220")
    assert not any(ln.strip().startswith(f"{job_id} ") for ln in after.stdout.splitlines())


def test_top_live_redraws_in_place_and_q_quits() -> None:
    """In a terminal: frames on the alternate screen, no screen clears between
    them (no flicker), and the q key ends it with exit 0, terminal restored."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: jobsys top in the pseudo-terminal
        os.execv(sys.executable, [sys.executable, "-m", "jobsys.cli", "top", "--interval", "0.3"])
    out = b""

    def read_for(seconds: float) -> None:
        nonlocal out
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    return

    read_for(3.0)
    os.write(fd, b"q")
    read_for(2.0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out.count(b"jobsys top") >= 2  # refreshed
    assert b"\x1b[?1049h" in out and b"\x1b[?1049l" in out  # alternate screen, restored
    assert b"\x1b[2J" not in out  # never cleared: frames overwrite each other
