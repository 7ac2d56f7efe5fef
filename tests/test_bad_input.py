"""Bad input at every boundary: rejected with a reason, nothing else changes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from jobsys.models import ResultBatch
from jobsys.nats.bridge import bridge, lookup_tasks
from jobsys.nats.subjects import JobNames
from jobsys.pg.db import connection
from jobsys.recording.apply import apply_results
from jobsys.settings import get_settings
from jobsys.worker.actors import process_results
from tests.helpers import assert_counters_match_ledger, counters, make_started_job, pull_results


def _rejections(job_id: int | None) -> list[dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT detail FROM job_events WHERE event = 'results_rejected' "
            "AND job_id IS NOT DISTINCT FROM %s ORDER BY id",
            (job_id,),
        ).fetchall()
    return [r["detail"] for r in rows]


def _stream_messages(job_id: int) -> int:
    names = JobNames.of(get_settings().namespace, job_id)

    async def count(nc: Any, js: Any) -> int:
        return int((await js.stream_info(names.stream)).state.messages)

    return bridge().run(count)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda i: {k: v for k, v in i.items() if k != "reply"}, "reply"),
        (lambda i: {**i, "task": "seven"}, "task"),
        (lambda i: {**i, "status": "maybe"}, "status"),
        (lambda i: {**i, "surprise": 1}, "surprise"),
        (lambda i: {**i, "status": "failed", "error": None, "result": None}, "error"),
        (lambda i: "not an object", "item"),
        (lambda i: {**i, "reply": "$JS.ACK.s\x00.c.1.1.1.1.0"}, "reply belongs to stream"),
    ],
)
def test_a_malformed_result_item_is_rejected_alone_with_a_reason_and_the_rest_count(
    mutate: Any, reason: str
) -> None:
    # Round 3 changed the premise: a malformed item used to reject its whole
    # batch; now it is rejected alone (not counted, not acked) and the rest count.
    job_id = make_started_job(3)
    items = pull_results(job_id, 3)
    bad = [mutate(items[0]), *items[1:]]
    before = len(_rejections(job_id))
    process_results.fn(job_id, bad)  # returns normally: no crash, no retry
    found = _rejections(job_id)
    assert len(found) == before + 1 and found[-1]["count"] == 1
    assert reason in json.dumps(found[-1]["reasons"])
    assert counters(job_id)["done"] == 2
    assert_counters_match_ledger(job_id)
    # Acks are async on the server: the two good messages go, the bad one stays.
    deadline = time.monotonic() + 10
    while _stream_messages(job_id) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stream_messages(job_id) == 1


def test_a_result_batch_that_is_not_a_list_is_rejected_with_a_reason() -> None:
    job_id = make_started_job(1)
    before = len(_rejections(job_id))
    process_results.fn(job_id, {"task": 0})
    found = _rejections(job_id)
    assert len(found) == before + 1 and "results" in found[-1]["reason"]
    assert counters(job_id)["done"] == 0


def test_a_result_for_an_unknown_job_is_an_event_not_a_crash() -> None:
    job_id = make_started_job(2)
    items = pull_results(job_id, 2)
    process_results.fn(987654321, items)
    assert any(d.get("job") == 987654321 for d in _rejections(None))


def test_a_task_number_out_of_range_is_rejected() -> None:
    job_id = make_started_job(2)
    items = pull_results(job_id, 2)
    applied = apply_results(
        ResultBatch.model_validate({"job_id": job_id, "results": [{**items[0], "task": 5}]}),
        lookup_tasks,
    )
    assert applied.ack == [] and len(applied.rejected) == 1
    assert "out of range" in json.dumps(_rejections(job_id)[-1])


def test_a_10mb_result_fails_its_task_with_the_reason_and_loses_nothing_else() -> None:
    job_id = make_started_job(2)
    items = pull_results(job_id, 2)
    huge = {**items[0], "result": {"blob": "x" * 10_000_000}}
    applied = apply_results(
        ResultBatch.model_validate({"job_id": job_id, "results": [huge, items[1]]}), lookup_tasks
    )
    assert (applied.moved_done, applied.moved_failed) == (1, 1)
    with connection() as conn:
        row = conn.execute(
            "SELECT status, error FROM job_tasks WHERE job_id = %s AND task_no = %s",
            (job_id, items[0]["task"]),
        ).fetchone()
    assert row is not None and row["status"] == "failed" and "exceeds" in row["error"]
    assert_counters_match_ledger(job_id)
