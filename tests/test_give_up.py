"""Retry rules per pipeline: what a pipeline gives up on fails its task at its first
delivery, with the exception's type; what it retries is delivered again (real worker
and processors)."""

from __future__ import annotations

import json
from pathlib import Path

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from tests.helpers import assert_counters_match_ledger, leave_only

MAX_DELIVER = 3
# Generous: each job takes a second or two.
FINAL_WITHIN_S = 120


def _tasks(job_id: int) -> dict[int, dict[str, object]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, status, error, deliveries FROM job_tasks WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return {r["task_no"]: dict(r) for r in rows}


def _run(pipeline: str, items: list[dict[str, object]], tmp_path: Path) -> dict[int, dict]:
    view = jobsys.submit(pipeline, iter(map(json.dumps, items)), max_deliver=MAX_DELIVER)
    leave_only(view.id)
    send_bootstrap(view.id)
    with LocalSystem(workers=1, processors=2, concurrency=4, log_dir=tmp_path):
        wait_until_final(view.id, timeout=FINAL_WITHIN_S)
    assert_counters_match_ledger(view.id)
    return _tasks(view.id)


def test_items_raising_a_give_up_exception_end_failed_after_exactly_one_delivery_each(
    tmp_path: Path,
) -> None:
    # A pipeline that declares nothing: a missing file and a missing key are
    # bad data, given up on at once by default.
    good = tmp_path / "good.txt"
    good.write_text("hello")
    items: list[dict[str, object]] = []
    for i in range(12):
        if i % 3 == 0:
            items.append({"path": str(good)})
        elif i % 3 == 1:
            items.append({"path": f"/nonexistent/jobsys/{i}.txt"})
        else:
            items.append({"file": "no path key"})
    tasks = _run("tests.pipelines:read_file_plainly", items, tmp_path)
    assert len(tasks) == len(items)
    for no, task in tasks.items():
        kind = no % 3
        if kind == 0:
            assert task["status"] == "done", task
            continue
        assert task["status"] == "failed" and task["deliveries"] == 1, task
        error = str(task["error"])
        assert error.startswith("FileNotFoundError: " if kind == 1 else "KeyError: "), task


def test_the_readme_batch_example_fails_an_item_without_text_at_once(tmp_path: Path) -> None:
    items = [{"text": "xx"} if i % 2 else {"n": i} for i in range(10)]
    tasks = _run("tests.pipelines:screen", items, tmp_path)
    for task in tasks.values():
        if task["status"] == "done":
            continue
        assert task["deliveries"] == 1 and task["error"] == "ValueError: no text", task
    assert sum(t["status"] == "failed" for t in tasks.values()) == 5


def test_declared_rules_retry_what_they_name_and_give_up_on_the_rest(tmp_path: Path) -> None:
    # tests-fetch: retry_on=(ConnectionError, QuotaExceeded), give_up_on=(OSError,)
    kinds = ["refused", "quota", "missing", "bug", "none"]
    tasks = _run("tests.pipelines:fetch", [{"raise": k} for k in kinds], tmp_path)
    by_kind = {kinds[no]: t for no, t in tasks.items()}
    for kind in ("refused", "quota"):
        task = by_kind[kind]
        assert task["status"] == "failed" and task["deliveries"] == MAX_DELIVER, task
        assert str(task["error"]).startswith(f"gave up after {MAX_DELIVER} deliveries: "), task
    refused = str(by_kind["refused"]["error"])
    assert refused.endswith("ConnectionRefusedError: [Errno 111] Connection refused")
    for kind, name in (("missing", "FileNotFoundError"), ("bug", "RuntimeError")):
        task = by_kind[kind]
        assert task["status"] == "failed" and task["deliveries"] == 1, task
        assert str(task["error"]).startswith(f"{name}: "), task
    assert by_kind["none"]["status"] == "done"
