"""Backoff between deliveries of a transient failure: the gaps grow, each at least the
schedule's, jitter within bounds; the wait is visible (`jobsys tasks --status pending`,
`blocked`) and costs no time limit and marks nothing lost (real worker, processors and
reconciler)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import jobsys
from jobsys.api.read import get_job, wait_until_final
from jobsys.api.tasks import list_tasks
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.lifecycle.blocked import WAITING_FOR_RETRY, why_blocked
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.processor.backoff import JITTER
from tests.helpers import leave_only
from tests.pipelines import DELIVERY_LOG_ENV

BASE_S, MAX_S = 2.0, 30.0
DELIVERIES = 4
TASKS = 3
# What a redelivery may take beyond its delay on a loaded 2-core machine
# (a pull waiting at the server, the dispatch): far above the ~0.1 s it takes.
LATENCY_SLACK_S = 5.0
FINAL_WITHIN_S = 120
SEEN_WITHIN_S = 30


def _deliveries(log: Path) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for line in log.read_text().splitlines():
        n, at = line.split()
        out[int(n)].append(float(at))
    return out


def test_a_transient_task_is_delivered_again_after_growing_delays_that_cost_nothing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "deliveries.log"
    items = [json.dumps({"n": n}) for n in range(TASKS)]
    view = jobsys.submit(
        "tests.pipelines:flaky",
        iter(items),
        max_deliver=DELIVERIES,
        retry_delay=f"{BASE_S:g},{MAX_S:g}",
        # Far below the waits: a wait counted against it would time tasks out.
        task_timeout_s=1.0,
    )
    leave_only(view.id)
    send_bootstrap(view.id)
    env = {
        DELIVERY_LOG_ENV: str(log),
        # The reconciler looks every second and would call a job idle this
        # long lost if waiting for a retry counted as idle with nothing to do.
        "JOBSYS_RECONCILE_EVERY_S": "1",
        "JOBSYS_LOST_AFTER_S": "1",
    }
    with LocalSystem(
        workers=1, processors=2, concurrency=2, log_dir=tmp_path, env=env, schedulers=1
    ):
        # While the tasks wait, the wait is visible.
        deadline = time.monotonic() + SEEN_WITHIN_S
        seen_pending = seen_blocked = False
        while time.monotonic() < deadline and not (seen_pending and seen_blocked):
            pending = list_tasks(view.id, ["pending"], limit=10).tasks or []
            if any(t.deliveries >= 2 and t.next_attempt_at is not None for t in pending):
                seen_pending = True
                listed = subprocess.run(
                    [sys.executable, "-m", "jobsys.cli", "tasks", str(view.id), "--status",
                     "pending", "--json"],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                rows = json.loads(listed.stdout)["tasks"]
                assert any(r["next_attempt_at"] and r["deliveries"] >= 2 for r in rows), rows
                assert all("ConnectionError" in (r["last_error"] or "") for r in rows), rows
            if why_blocked(get_job(view.id)) == WAITING_FOR_RETRY:
                seen_blocked = True
            time.sleep(0.2)
        assert seen_pending, "no pending task showed its deliveries and next attempt"
        assert seen_blocked, f"blocked never said {WAITING_FOR_RETRY!r}"
        final = wait_until_final(view.id, timeout=FINAL_WITHIN_S)
    assert final.failed == TASKS and final.lost == 0, final
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, status, error, deliveries FROM job_tasks WHERE job_id = %s",
            (view.id,),
        ).fetchall()
    for r in rows:
        assert r["deliveries"] == DELIVERIES, dict(r)
        assert r["error"] == (
            f"gave up after {DELIVERIES} deliveries: ConnectionError: service unavailable"
        ), dict(r)
    runs = _deliveries(log)
    assert sorted(runs) == list(range(TASKS))
    for n, times in runs.items():
        assert len(times) == DELIVERIES, (n, times)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for i, gap in enumerate(gaps):
            scheduled = min(MAX_S, BASE_S * 2**i)
            # Never before its delay; jitter adds at most JITTER of it.
            assert gap >= scheduled, (n, i, gaps)
            assert gap <= scheduled * (1 + JITTER) + LATENCY_SLACK_S, (n, i, gaps)
        assert gaps == sorted(gaps), (n, gaps)
