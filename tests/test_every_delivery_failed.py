"""A task whose every delivery failed ends `failed` with its error, never `lost`, and its
job ends without waiting for a reconciler pass (real worker and processor, no scheduler)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from tests.helpers import assert_counters_match_ledger, leave_only

TASKS = 20
MAX_DELIVER = 5
# Generous: 5 deliveries 0.2 s apart (the nak delay) take ~1 s per task; a job
# that waits for a reconciler pass would wait for ever here (none runs).
FINAL_WITHIN_S = 120


def test_tasks_that_fail_on_every_delivery_all_end_failed_with_their_error(
    tmp_path: Path,
) -> None:
    items = [json.dumps({"path": f"/nonexistent/jobsys/{i}.txt"}) for i in range(TASKS)]
    view = jobsys.submit("tests.pipelines:read_file", iter(items), max_deliver=MAX_DELIVER)
    leave_only(view.id)
    send_bootstrap(view.id)
    started = time.monotonic()
    env = {"JOBSYS_ACK_WAIT_S": "30", "JOBSYS_NAK_DELAY_S": "1"}
    with LocalSystem(workers=1, processors=2, concurrency=8, log_dir=tmp_path, env=env):
        final = wait_until_final(view.id, timeout=FINAL_WITHIN_S)
    took = time.monotonic() - started
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, status, error, deliveries FROM job_tasks WHERE job_id = %s",
            (view.id,),
        ).fetchall()
    wrong = [dict(r) for r in rows if r["status"] != "failed"]
    assert wrong == [], f"tasks that did not end failed (job final after {took:.0f}s): {wrong}"
    for r in rows:
        assert r["error"].startswith(f"gave up after {MAX_DELIVER} deliveries: ")
        assert "FileNotFoundError" in r["error"] and "No such file" in r["error"]
    assert final.status == "failure" and final.failed == TASKS and final.lost == 0
    assert_counters_match_ledger(view.id)
