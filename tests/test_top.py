"""`jobsys top --once` prints one frame: each active job with its progress,
counts, rate, ETA, age and the reconciler's latest finding, read in one query."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from rich.console import Console

import jobsys
from jobsys.cli.top import frame
from jobsys.lifecycle.blocked import WAITING_FOR_RETRY, blocked_reason, waits_for_retry
from jobsys.lifecycle.states import Status, transition
from jobsys.nats.presence import Member
from jobsys.ops.monitor import active_jobs
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.recording.counting import record_results
from jobsys.worker.actors import note_retries

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


def _alive(kind: str, jobs: list[int]) -> Member:
    now = datetime.now(UTC)
    return Member(kind=kind, id=f"top-{kind}", host="h", pid=1, version="0", started_at=now,
                  seen_at=now, jobs=jobs)  # fmt: skip


def _line_of(job_id: int, team: list[Member]) -> str:
    out = Console(file=io.StringIO(), width=300, record=True)
    out.print(frame(active_jobs(), screen=False, team=team))
    text = out.export_text()
    return next(ln for ln in text.splitlines() if ln.split()[:2] == [str(job_id), "top-wait"])


def test_top_says_a_job_waits_for_its_retry_delay_as_status_does() -> None:
    # A started job, served and recorded (a live worker and processor announced),
    # whose every pending task waits for its next delivery after a transient failure.
    job_id = jobsys.submit("echo", (json.dumps({"n": i}) for i in range(3)), name="top-wait").id
    try:
        with connection() as conn:
            transition(conn, job_id, Status.STARTED, {Status.QUEUED}, "test")
            record_results(conn, job_id, [(0, "done", "{}", None, 1)])
        team = [_alive("worker", []), _alive("processor", [job_id])]
        assert _line_of(job_id, team).split()[-1] == "-"
        later = (datetime.now(UTC) + timedelta(hours=1)).timestamp()
        # What a processor's retry notes write (its note_retries message).
        note_retries.fn(job_id, [[task, 2, later, "ConnectionError: down"] for task in (1, 2)])
        # `jobsys status` (why_blocked) judges it so with this team...
        assert blocked_reason(job_id, "started", team, datetime.now(UTC)) is None
        assert waits_for_retry(job_id)
        # ...and so does top.
        line = _line_of(job_id, team)
        assert line.rstrip().endswith(WAITING_FOR_RETRY), line
    finally:
        jobsys.cancel(job_id)
