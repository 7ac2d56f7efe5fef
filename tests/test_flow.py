"""End to end through real worker and processor processes, Postgres, Redis and NATS."""

from __future__ import annotations

import json
from pathlib import Path

import jobsys
from jobsys.api.items import counted_items, read_items
from jobsys.api.read import wait_until_final
from tests.helpers import assert_counters_match_ledger, status_events, stream_exists


def test_a_5000_task_job_ends_success_with_every_task_counted_once(system: object) -> None:
    job = jobsys.submit("echo", counted_items(5000), name="five thousand")
    final = wait_until_final(job.id, timeout=180)
    assert final.status == "success"
    assert (final.done, final.failed, final.lost, final.total) == (5000, 0, 0, 5000)
    assert final.progress == 1.0
    assert_counters_match_ledger(job.id)
    assert status_events(job.id) == ["started", "success"]
    assert final.started_at is not None and final.finished_at is not None


def _items(tmp_path: Path, fails: int, total: int) -> Path:
    path = tmp_path / "items.jsonl"
    lines = [json.dumps({"i": i, "fail": i < fails}) for i in range(total)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_failures_at_the_threshold_still_succeed_and_above_it_fail(
    system: object, tmp_path: Path
) -> None:
    # 10 of 100 failed: 0.10 is not more than a 0.10 threshold -> success.
    at = jobsys.submit("echo", read_items(_items(tmp_path, 10, 100)), failure_threshold=0.1)
    # 11 of 100 failed: more than 0.10 -> failure.
    above = jobsys.submit("echo", read_items(_items(tmp_path, 11, 100)), failure_threshold=0.1)
    final_at = wait_until_final(at.id, timeout=120)
    final_above = wait_until_final(above.id, timeout=120)
    assert (final_at.status, final_at.done, final_at.failed) == ("success", 90, 10)
    assert (final_above.status, final_above.done, final_above.failed) == ("failure", 89, 11)
    assert_counters_match_ledger(at.id)
    assert_counters_match_ledger(above.id)


def test_a_zero_task_job_finishes_at_once(system: object) -> None:
    job = jobsys.submit("echo", counted_items(0))
    final = wait_until_final(job.id, timeout=60)
    assert final.status == "success"
    assert final.total == 0
    assert not stream_exists(job.id)


def test_a_transient_failure_on_every_delivery_fails_the_task_after_max_deliver(
    system: object, tmp_path: Path
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"transient": true}\n{"n": 1}\n')
    job = jobsys.submit("echo", read_items(path), max_deliver=3, failure_threshold=0.5)
    final = wait_until_final(job.id, timeout=120)
    assert (final.status, final.done, final.failed) == ("success", 1, 1)
    assert_counters_match_ledger(job.id)


def test_the_stream_is_deleted_once_the_job_is_final(system: object) -> None:
    job = jobsys.submit("sha256", iter(['{"data": "abc"}']))
    final = wait_until_final(job.id, timeout=60)
    assert final.status == "success"
    deadline_ok = False
    for _ in range(40):
        if not stream_exists(job.id):
            deadline_ok = True
            break
        import time

        time.sleep(0.25)
    assert deadline_ok, "teardown did not delete the stream of a finished job"
