"""Failures you can read: a failed task keeps its exception type and a cut traceback,
`--by-error` groups by cause (3 groups for 3 causes whose messages differ per task),
and what a pipeline prints or logs reaches the processor's log with the job and task
ids (real worker and processor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.ops.runner import LocalSystem
from tests.helpers import leave_only

TASKS = 30
FINAL_WITHIN_S = 120


def _cli(*args: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_failed_tasks_keep_type_and_traceback_and_group_by_cause(tmp_path: Path) -> None:
    items = [json.dumps({"n": n}) for n in range(TASKS)]
    view = jobsys.submit("tests.pipelines:three_causes", iter(items))
    leave_only(view.id)
    send_bootstrap(view.id)
    with LocalSystem(workers=1, processors=1, concurrency=2, log_dir=tmp_path):
        final = wait_until_final(view.id, timeout=FINAL_WITHIN_S)
    assert final.failed == TASKS

    listed = _cli("tasks", str(view.id), "--status", "failed", "--json", "--limit", "100")
    types = {t["task"]: t["error_type"] for t in listed["tasks"]}
    assert types == {
        n: ("FileNotFoundError", "KeyError", "ValueError")[n % 3] for n in range(TASKS)
    }
    for t in listed["tasks"]:
        trace = t["error_trace"]
        assert trace.startswith("Traceback (most recent call last):"), t
        assert "three_causes" in trace and "tests/pipelines.py" in trace, t
        assert trace.rstrip().endswith(t["error"].rstrip()) or t["error_type"] in trace, t

    grouped = _cli("tasks", str(view.id), "--by-error", "--json")
    assert grouped["distinct_errors"] == 3, grouped
    by_type = {g["error_type"]: g for g in grouped["errors"]}
    assert set(by_type) == {"FileNotFoundError", "KeyError", "ValueError"}
    for g in grouped["errors"]:
        assert g["tasks"] == TASKS // 3
        assert g["example_error"] and g["example_task"] in types

    logs = "".join(p.read_text() for p in tmp_path.glob("processor-*.log"))
    for n in (0, 1, 2, TASKS - 1):
        printed = [line for line in logs.splitlines() if f"working on item {n}" in line]
        assert printed, f"print of task {n} not in the processor's log"
        assert f"job_id={view.id}" in printed[0] and f"task={n}" in printed[0], printed
        logged = [line for line in logs.splitlines() if f"pipeline logs: item {n}" in line]
        assert logged and f"job_id={view.id}" in logged[0] and f"task={n}" in logged[0], logged
