"""Binding a result to its delivery, without servers: the reply checks, the decision made
from a stream lookup (a fake one here), and one row per task reported twice."""

from __future__ import annotations

from jobsys.models import ResultBatch, TaskResult
from jobsys.nats.subjects import JobNames
from jobsys.recording.binding import (
    ANOTHER_TASKS_MESSAGE,
    NO_TASK_MESSAGE,
    screen,
    sort_by_lookup,
)
from jobsys.recording.counting import repeated, rows_of
from jobsys.settings import get_settings

JOB = 7


def reply(seq: int, delivered: int = 1, job_id: int = JOB) -> str:
    names = JobNames.of(get_settings().namespace, job_id)
    return f"$JS.ACK.{names.stream}.{names.consumer}.{delivered}.{seq}.{seq}.1700000000000000000.0"


def done(task: int, seq: int, **kw: object) -> TaskResult:
    return TaskResult.model_validate(
        {"task": task, "status": "done", "result": {"n": task}, "reply": reply(seq), **kw}
    )


def test_screen_keeps_replies_of_this_jobs_stream_and_rejects_the_rest_with_reasons() -> None:
    batch = ResultBatch.model_validate(
        {
            "job_id": JOB,
            "results": [
                done(0, 1).model_dump(),
                {**done(1, 2).model_dump(), "reply": "_INBOX.not-an-ack"},
                {**done(2, 3).model_dump(), "reply": reply(3, job_id=JOB + 1)},
                done(9, 10).model_dump(),
                {"task": "x", "status": "done", "reply": "r"},
            ],
        }
    )
    valid, rejected, reasons = screen(batch, total=5)
    assert [(r.task, seq) for r, seq in valid] == [(0, 1)]
    assert len(rejected) == 4
    assert reasons["reply is not a JetStream ack subject"] == 1
    assert any("not this job's" in reason for reason in reasons)
    assert reasons["task 9 is out of range (job has 5 tasks)"] == 1


def test_the_lookup_decides_which_unbound_items_count() -> None:
    own, swapped, nowhere = done(0, 11), done(1, 12), done(2, 13)
    items = [(own, 11), (swapped, 12), (nowhere, 13), (done(3, 4), 4)]
    unbound = {(0, 11), (1, 12), (2, 13)}
    found = {11: (JOB, 0), 12: (JOB, 5), 13: None}
    bound, misbound = sort_by_lookup(JOB, items, unbound, found)
    # Task 3 was bound by the counting statement: not looked at again.
    assert [r.task for r, _ in bound] == [0]
    assert {r.task: why for r, why in misbound} == {
        1: ANOTHER_TASKS_MESSAGE,
        2: NO_TASK_MESSAGE,
    }


def test_a_task_twice_for_one_message_is_one_row_done_winning() -> None:
    failed = TaskResult.model_validate(
        {"task": 4, "status": "failed", "error": "boom", "reply": reply(5), "deliveries": 3}
    )
    rows, seqs = rows_of([(failed, 5), (done(4, 5, deliveries=2), 5)], max_bytes=1_000)
    assert rows == [(4, "done", '{"n": 4}', None, 3)] and seqs == [5]
    assert repeated([(failed, 5), (done(4, 5), 5), (done(6, 7), 7)]) == [4]


def test_a_result_that_cannot_be_stored_is_its_tasks_failure() -> None:
    nan = TaskResult.model_validate(
        {"task": 1, "status": "done", "result": {"x": float("nan")}, "reply": reply(2)}
    )
    big = done(2, 3, result={"s": "x" * 100})
    rows, _ = rows_of([(nan, 2), (big, 3)], max_bytes=50)
    assert rows[0][1] == "failed" and "NaN or Infinity" in (rows[0][3] or "")
    assert rows[1][1] == "failed" and "exceeds the 50 byte limit" in (rows[1][3] or "")
