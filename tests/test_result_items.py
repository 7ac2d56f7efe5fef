"""Every task's outcome stands on its own: one bad value in a result batch fails
that task alone, with a reason, and costs no other task a count or a delivery.

The worker must not trust the sender (a processor of an older version sends
raw NaN, NUL characters, over-long errors, a task twice), so most tests call
the result actor directly with real reply subjects of real NATS messages, and
one runs a real job through real processes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.bootstrap.start import run_bootstrap
from jobsys.errors import PermanentError
from jobsys.models import ResultBatch
from jobsys.nats.bridge import bridge, lookup_tasks
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.recording.apply import apply_results
from jobsys.recording.counting import ResultRow, record_or_split
from jobsys.settings import get_settings
from jobsys.storable import MAX_ERROR_CHARS
from jobsys.testing.faults import LONG_ERROR_CHARS
from jobsys.testing.faults import fault_echo as echo
from jobsys.testing.faults import fault_echo_batch as echo_batch
from jobsys.worker.actors import process_results
from tests.helpers import (
    assert_counters_match_ledger,
    counters,
    make_started_job,
    pull_results,
)


def _tasks(job_id: int) -> dict[int, dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, status, result::text AS result, error, deliveries "
            "FROM job_tasks WHERE job_id = %s ORDER BY task_no",
            (job_id,),
        ).fetchall()
    return {r["task_no"]: dict(r) for r in rows}


def _stream_messages(job_id: int) -> int:
    """Messages still in the job's stream (work-queue retention: acked ones are gone)."""
    names = JobNames.of(get_settings().namespace, job_id)

    async def count(nc: Any, js: Any) -> int:
        info = await js.stream_info(names.stream)
        return int(info.state.messages)

    return bridge().run(count)


def _wait_stream_messages(job_id: int, expected: int, timeout: float = 10.0) -> int:
    # Acks are processed by the server after the actor returns; give it a moment.
    deadline = time.monotonic() + timeout
    while (n := _stream_messages(job_id)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def _republish(job_id: int, task_no: int) -> None:
    """Publish `task_no` again as a new stream message, as a re-publish after the
    duplicate window does: its Nats-Msg-Id has a leading zero, so JetStream does not
    drop it as a duplicate, and it still names the same job and task."""
    names = JobNames.of(get_settings().namespace, job_id)
    with connection() as conn:
        row = conn.execute(
            "SELECT payload::text AS p FROM job_tasks WHERE job_id = %s AND task_no = %s",
            (job_id, task_no),
        ).fetchone()
    assert row is not None

    async def publish(nc: Any, js: Any) -> None:
        await js.publish(
            names.subject, row["p"].encode(), headers={"Nats-Msg-Id": f"0{job_id}:{task_no}"}
        )

    bridge().run(publish)


def test_a_nan_or_infinite_result_fails_its_task_alone_and_every_reply_is_acked() -> None:
    job_id = make_started_job(20, failure_threshold=0.5)
    items = pull_results(job_id, 20)
    assert len(items) == 20
    items[3] = {**items[3], "result": {"mean": float("nan")}}
    items[7] = {**items[7], "result": {"max": float("inf")}}
    process_results.fn(job_id, items)
    tasks = _tasks(job_id)
    bad = {items[3]["task"], items[7]["task"]}
    for t in bad:
        assert tasks[t]["status"] == "failed"
        assert "not storable as JSON" in tasks[t]["error"], tasks[t]["error"]
        assert "NaN or Infinity" in tasks[t]["error"]
    assert all(row["status"] == "done" for t, row in tasks.items() if t not in bad)
    assert jobsys.get_job(job_id).status == "success"
    assert_counters_match_ledger(job_id)


def test_an_error_text_with_a_nul_character_is_stored_escaped() -> None:
    job_id = make_started_job(5)
    items = pull_results(job_id, 5, fail={1})
    items = [{**i, "error": "bad\x00byte"} if i["status"] == "failed" else i for i in items]
    process_results.fn(job_id, items)
    tasks = _tasks(job_id)
    assert tasks[1]["status"] == "failed" and tasks[1]["error"] == "bad\\x00byte"
    assert counters(job_id)["done"] == 4
    assert_counters_match_ledger(job_id)


def test_an_error_over_the_length_limit_is_cut_and_sinks_no_other_task() -> None:
    job_id = make_started_job(5)
    items = pull_results(job_id, 5, fail={0})
    items = [{**i, "error": "e" * 20_000} if i["status"] == "failed" else i for i in items]
    process_results.fn(job_id, items)
    tasks = _tasks(job_id)
    error = tasks[0]["error"]
    assert tasks[0]["status"] == "failed"
    assert len(error) == MAX_ERROR_CHARS and error.endswith("[cut: 20,000 characters in all]")
    assert (counters(job_id)["done"], counters(job_id)["failed"]) == (4, 1)
    assert_counters_match_ledger(job_id)


def test_a_task_twice_in_one_batch_counts_once_and_all_its_replies_are_acked() -> None:
    # One task (5) is left out of the batch: the job stays started, so its
    # stream is still there to show what was acked (a finished job's is deleted).
    job_id = make_started_job(6)
    _republish(job_id, 2)
    items = pull_results(job_id, 7)
    assert sorted(i["task"] for i in items) == [0, 1, 2, 2, 3, 4, 5]
    assert _stream_messages(job_id) == 7
    process_results.fn(job_id, [i for i in items if i["task"] != 5])
    assert counters(job_id) == {"done": 5, "failed": 0, "lost": 0, "cancelled": 0, "total": 6}
    assert jobsys.get_job(job_id).status == "started"
    assert _wait_stream_messages(job_id, 1) == 1  # task 5's message alone
    assert_counters_match_ledger(job_id)
    jobsys.cancel(job_id)


def test_a_done_and_a_failed_reply_of_one_task_in_one_batch_count_it_done_once() -> None:
    job_id = make_started_job(3)
    _republish(job_id, 1)
    items = pull_results(job_id, 4)
    first = next(i for i in items if i["task"] == 1)
    failed = {**first, "status": "failed", "result": None, "error": "flaky"}
    items = [failed if i is first else i for i in items]
    process_results.fn(job_id, items)
    assert _tasks(job_id)[1]["status"] == "done"
    assert (counters(job_id)["done"], counters(job_id)["failed"]) == (3, 0)
    assert_counters_match_ledger(job_id)


def test_a_result_json_cannot_write_fails_its_task_with_the_reason() -> None:
    job_id = make_started_job(3)
    items = pull_results(job_id, 3)
    items[0] = {**items[0], "result": {"tags": {"a", "b"}}}
    applied = apply_results(
        ResultBatch.model_validate({"job_id": job_id, "results": items}), lookup_tasks
    )
    assert (applied.moved_done, applied.moved_failed) == (2, 1)
    assert len(applied.ack) == 3
    error = _tasks(job_id)[items[0]["task"]]["error"]
    assert "not storable as JSON" in error and "set" in error
    assert_counters_match_ledger(job_id)


@contextlib.contextmanager
def _database_refuses(marker: str) -> Iterator[None]:
    """Make Postgres itself refuse any result holding `marker` (a CHECK constraint):
    a stand-in for whatever value gets past the worker's own checks."""
    with connection() as conn:
        conn.execute(
            "ALTER TABLE job_tasks ADD CONSTRAINT test_refuses_marker "
            f"CHECK (result IS NULL OR strpos(result::text, '{marker}') = 0) NOT VALID"
        )
    try:
        yield
    finally:
        with connection() as conn:
            conn.execute("ALTER TABLE job_tasks DROP CONSTRAINT test_refuses_marker")


def test_a_batch_the_database_refuses_is_split_and_only_the_offending_tasks_fail() -> None:
    # Task 50 is left out of the batch: the job stays started, and its stream
    # shows every recorded reply acked, the refused ones' included.
    job_id = make_started_job(51, failure_threshold=0.5)
    items = [i for i in pull_results(job_id, 51) if i["task"] != 50]
    poisoned = {items[5]["task"], items[31]["task"]}
    items = [{**i, "result": {"v": "refuse-me"}} if i["task"] in poisoned else i for i in items]
    with _database_refuses("refuse-me"):
        process_results.fn(job_id, items)
    tasks = _tasks(job_id)
    for t in poisoned:
        assert tasks[t]["status"] == "failed" and tasks[t]["result"] is None
        assert "the database refused" in tasks[t]["error"]
        assert "test_refuses_marker" in tasks[t]["error"]
    assert sum(row["status"] == "done" for row in tasks.values()) == 48
    assert jobsys.get_job(job_id).status == "started"
    assert _wait_stream_messages(job_id, 1) == 1
    assert_counters_match_ledger(job_id)
    jobsys.cancel(job_id)


def test_a_real_job_with_nan_nul_long_errors_and_a_republished_task_loses_no_other_task(
    tmp_path: Path,
) -> None:
    odd = {2: "nan", 5: "inf", 9: "nul", 13: "long_error"}
    texts = [f'{{"n": {n}, "odd": "{odd[n]}"}}' if n in odd else f'{{"n": {n}}}' for n in range(20)]
    job = jobsys.submit("tests.pipelines:odd_values", texts, failure_threshold=0.5)
    job_id = job.id
    # Publish here (the worker's own bootstrap then finds nothing left to do),
    # so task 7 can be re-published as a second stream message before any
    # processor runs.
    assert run_bootstrap(job_id) == "published"
    _republish(job_id, 7)
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path):
        final = wait_until_final(job_id, timeout=60)
    assert (final.status, final.done, final.failed, final.lost) == ("success", 16, 4, 0)
    tasks = _tasks(job_id)
    assert "NaN or Infinity" in tasks[2]["error"] and "NaN or Infinity" in tasks[5]["error"]
    assert tasks[9]["error"] == "bad\\x00byte"
    assert len(tasks[13]["error"]) == MAX_ERROR_CHARS
    assert tasks[7]["status"] == "done"
    assert_counters_match_ledger(job_id)


def test_echo_and_echo_batch_return_or_raise_the_odd_value_a_payload_asks_for() -> None:
    # The chaos suite's job mix asks the built-in pipelines for these values.
    assert math.isnan(echo({"odd": "nan"})["mean"])
    assert echo({"odd": "inf"})["max"] == float("inf")
    with pytest.raises(PermanentError, match="bad\x00byte"):
        echo({"odd": "nul"})
    with pytest.raises(PermanentError) as long_error:
        echo({"odd": "long_error"})
    assert len(str(long_error.value)) == LONG_ERROR_CHARS
    assert echo({"n": 1, "odd": None}) == {"n": 1, "odd": None}
    out = echo_batch([{"odd": "nan"}, {"odd": "nul"}, {"n": 2}])
    assert math.isnan(out[0]["mean"]) and isinstance(out[1], PermanentError)
    assert out[2] == {"n": 2}


def test_a_value_the_batch_encoding_cannot_carry_fails_only_its_task() -> None:
    # Every text is made storable before it gets here; the counting statement's
    # own encoding (one JSON document per batch) must still fail one row alone
    # if something unstorable slips through: a lone surrogate, a NUL.
    job_id = make_started_job(6, failure_threshold=0.9)
    rows: list[ResultRow] = [
        (0, "done", '{"n": 0}', None, 1),
        (1, "failed", None, "lone \ud800 surrogate", 1),
        (2, "done", '{"n": 2}', None, 1),
        (3, "failed", None, "nul \x00 here", 1, "Kind", None),
        (4, "done", '{"n": 4}', None, 1),
    ]
    with connection() as conn:
        recorded = record_or_split(conn, job_id, rows, [None] * len(rows))
    assert sorted(recorded.refused) == [1, 3]
    assert (recorded.moved_done, recorded.moved_failed) == (3, 2)
    tasks = _tasks(job_id)
    assert [tasks[t]["status"] for t in range(6)] == ["done", "failed", "done", "failed", "done",
                                                      "pending"]  # fmt: skip
    assert all("the database refused" in tasks[t]["error"] for t in (1, 3))
    assert_counters_match_ledger(job_id)
    jobsys.cancel(job_id)
