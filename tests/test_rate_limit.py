"""Rate limits across processors: a job under `--rate 20/s` spread over two processors
never starts more than 20 tasks (+ the burst) in any second, takes its time, charges no
delivery for waiting, and an unlimited job beside it is not held up (real worker,
processors and Redis)."""

from __future__ import annotations

import bisect
import re
from pathlib import Path

import jobsys
from jobsys.api.items import counted_items
from jobsys.api.read import wait_until_final
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from tests.helpers import assert_counters_match_ledger, leave_only

RATE = 20
BURST_S = 0.25  # JOBSYS_RATE_BURST_S: a burst of 5 tasks at 20/s
BURST = int(RATE * BURST_S)
TASKS = 300
UNLIMITED_TASKS = 2_000
FINAL_WITHIN_S = 180

_START = re.compile(r"rate-limited tasks start .*?job_id=(\d+) tasks=(\d+) at=([0-9.]+)")


def _starts(log_dir: Path, job_id: int) -> list[float]:
    """When the processors let each of the job's tasks start (their debug log)."""
    starts: list[float] = []
    for path in log_dir.glob("processor-*.log"):
        for match in _START.finditer(path.read_text()):
            if int(match.group(1)) == job_id:
                starts += [float(match.group(3))] * int(match.group(2))
    return sorted(starts)


def test_a_rate_limited_job_keeps_its_rate_across_processors_and_costs_no_delivery(
    tmp_path: Path,
) -> None:
    limited = jobsys.submit("echo", counted_items(TASKS), rate=f"{RATE}/s")
    unlimited = jobsys.submit("echo", counted_items(UNLIMITED_TASKS))
    leave_only(limited.id)  # neither has a stream yet; both bootstraps are sent below
    send_bootstrap(limited.id)
    send_bootstrap(unlimited.id)
    env = {"JOBSYS_RATE_BURST_S": str(BURST_S), "JOBSYS_LOG_LEVEL": "DEBUG"}
    with LocalSystem(workers=1, processors=2, concurrency=4, log_dir=tmp_path, env=env):
        other = wait_until_final(unlimited.id, timeout=FINAL_WITHIN_S)
        final = wait_until_final(limited.id, timeout=FINAL_WITHIN_S)
    assert final.status == "success" and other.status == "success"
    # The unlimited job beside it was not held to its pace.
    assert other.finished_at is not None and final.finished_at is not None
    assert other.finished_at < final.finished_at
    starts = _starts(tmp_path, limited.id)
    assert len(starts) >= TASKS
    # Never more than RATE starts (+ the burst) in any one-second window.
    busiest = max(bisect.bisect_left(starts, t + 1.0) - i for i, t in enumerate(starts))
    assert busiest <= RATE + BURST, busiest
    # 300 tasks at 20/s after a burst of 5 cannot start in under 14.75 s.
    assert starts[-1] - starts[0] >= 14.0, starts[-1] - starts[0]
    # Waiting for a token cost no task a delivery.
    with connection() as conn:
        deliveries = conn.execute(
            "SELECT max(deliveries) AS most, count(*) FILTER (WHERE status = 'done') AS done "
            "FROM job_tasks WHERE job_id = %s",
            (limited.id,),
        ).fetchone()
    assert deliveries is not None and deliveries["done"] == TASKS and deliveries["most"] == 1
    assert_counters_match_ledger(limited.id)
