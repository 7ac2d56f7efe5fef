"""A job's results go to the workers in few batches: a processor shared by
many jobs does not send one batch per pull while a job's stream still holds
tasks for it (each batch costs a Dramatiq message, a transaction and acks)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jobsys
from devtools.process import free_port
from jobsys.api.read import wait_until_final
from jobsys.ops.runner import LocalSystem
from tests.test_metrics import value, wait_for

JOBS = 30
TASKS = 20
SLOTS = 8
SLEEP_MS = 0
# Fair shares hand each job a task or two per pull; sealed per pull, most
# results would go one or two to a batch. Sealed by the flush timer instead
# (or when the stream said no task was left), a job takes a few batches.
MAX_BATCHES = JOBS * 3


def test_jobs_sharing_a_processor_are_recorded_in_few_batches(tmp_path: Path) -> None:
    port = free_port()
    system = LocalSystem(workers=1, processors=1, concurrency=SLOTS, log_dir=tmp_path)
    system.processor_cmd += ["--metrics-port", str(port)]
    with system:
        before = value(wait_for(port), "jobsys_result_batches_sent_total")
        ids = [
            jobsys.submit(
                "echo", (json.dumps({"n": i, "sleep_ms": SLEEP_MS}) for i in range(TASKS)),
                name=f"batching-{j}",
            ).id
            for j in range(JOBS)
        ]  # fmt: skip
        for job_id in ids:
            view = wait_until_final(job_id, timeout=120)
            assert view.status == "success" and view.done == TASKS
        time.sleep(0.5)  # the last confirmation reaches the processor
        sent = value(wait_for(port), "jobsys_result_batches_sent_total") - before
    assert JOBS <= sent <= MAX_BATCHES, sent
