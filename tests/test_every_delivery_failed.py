"""A task whose every delivery failed ends `failed` with its error, never `lost`, and its
job ends without waiting for a reconciler pass (real worker and processor, no scheduler)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.bootstrap.start import run_bootstrap
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.settings import get_settings
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
    env = {"JOBSYS_ACK_WAIT_S": "30", "JOBSYS_RETRY_DELAY_S": "1"}
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


def test_a_delivery_the_server_counted_but_nobody_ran_does_not_make_a_failing_task_lost(
    tmp_path: Path,
) -> None:
    # nats-server before 2.11 counts a redelivery that meets an expired pull
    # request without making it (fixed upstream in 2.11). Here the test plays
    # that server: it takes the task's first delivery and never answers it,
    # as if it had gone nowhere; ack_wait later NATS delivers it again, to a
    # real processor, on what is already the job's last allowed delivery.
    items = [json.dumps({"path": "/nonexistent/jobsys/burnt.txt"})]
    view = jobsys.submit("tests.pipelines:read_file", iter(items), max_deliver=1)
    job_id = view.id
    assert run_bootstrap(job_id) == "published"
    leave_only(job_id)
    names = JobNames.of(get_settings().namespace, job_id)

    async def take_one(nc: Any, js: Any) -> int:
        sub = await js.pull_subscribe_bind(consumer=names.consumer, stream=names.stream)
        (msg,) = await sub.fetch(1, timeout=5)
        await sub.unsubscribe()
        return int(msg.metadata.num_delivered)

    assert bridge().run(take_one) == 1
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path):
        final = wait_until_final(job_id, timeout=FINAL_WITHIN_S)
    with connection() as conn:
        (task,) = conn.execute(
            "SELECT status, error, deliveries FROM job_tasks WHERE job_id = %s", (job_id,)
        ).fetchall()
    assert task["status"] == "failed", dict(task)
    assert task["error"].startswith("gave up after 2 deliveries: ")
    assert "FileNotFoundError" in task["error"]
    assert final.status == "failure" and final.lost == 0
