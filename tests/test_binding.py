"""A result counts only for the task whose stream message its reply points at.

Attacks by someone who can send signed result batches (a processor's host):
reporting one task's result with another task's real reply subject, and
inventing reply subjects. Each result must be rejected with an event, counted
for no task and acked for no message; the real results still count.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.bootstrap.start import run_bootstrap
from jobsys.dramatiq.messages import send_results
from jobsys.models import ResultBatch
from jobsys.nats.bridge import bridge, lookup_tasks
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.recording.apply import apply_results
from jobsys.settings import get_settings
from jobsys.worker.actors import process_results
from tests.helpers import (
    assert_counters_match_ledger,
    counters,
    make_started_job,
    messages_in_stream,
    pull_results,
)


def _tasks(job_id: int) -> dict[int, dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, status, result FROM job_tasks WHERE job_id = %s", (job_id,)
        ).fetchall()
    return {r["task_no"]: dict(r) for r in rows}


def _rejected_events(job_id: int) -> list[dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT detail FROM job_events WHERE job_id = %s AND event = 'results_rejected' "
            "ORDER BY id",
            (job_id,),
        ).fetchall()
    return [r["detail"] for r in rows]


def _ack_sync(reply: str) -> None:
    """Ack one message and wait for the server to confirm it. The consumer handles
    acks in order, so every ack sent before on this process's connection (the
    actor's) has been handled too when this returns."""

    async def ack(nc: Any, js: Any) -> None:
        await nc.request(reply, b"+ACK", timeout=5)

    bridge().run(ack)


def _stream_messages(job_id: int) -> int:
    """Messages still in the job's stream (work-queue retention: acked ones are gone)."""
    names = JobNames.of(get_settings().namespace, job_id)

    async def count(nc: Any, js: Any) -> int:
        return int((await js.stream_info(names.stream)).state.messages)

    return bridge().run(count)


def test_swapped_reply_subjects_count_for_neither_task_and_ack_neither_message() -> None:
    job_id = make_started_job(3)
    real = {i["task"]: i for i in pull_results(job_id, 3)}
    assert sorted(real) == [0, 1, 2]
    # Task 0 reported with task 1's reply and the other way round; each result
    # is one the task never produced.
    swapped = [
        {**real[0], "result": {"forged": 0}, "reply": real[1]["reply"]},
        {**real[1], "result": {"forged": 1}, "reply": real[0]["reply"]},
    ]
    process_results.fn(job_id, swapped)  # the actor's whole path, acks included

    tasks = _tasks(job_id)
    assert (tasks[0]["status"], tasks[1]["status"]) == ("pending", "pending"), tasks
    # Applied again: still nothing to ack.
    assert (
        apply_results(
            ResultBatch.model_validate({"job_id": job_id, "results": swapped}), lookup_tasks
        ).ack
        == []
    )
    assert counters(job_id)["done"] == 0
    events = _rejected_events(job_id)
    assert events and all(e["tasks"] == [0, 1] for e in events), events
    assert "another task's message" in str(events[0]["reasons"])
    # Neither message was acked: after task 2's own ack is confirmed, both are still there.
    _ack_sync(real[2]["reply"])
    assert _stream_messages(job_id) == 2

    # The real results, with their own replies, count.
    process_results.fn(job_id, [real[0], real[1], real[2]])
    view = jobsys.get_job(job_id)
    assert (view.status, view.done) == ("success", 3)
    tasks = _tasks(job_id)
    assert tasks[0]["result"] == {"n": 0} and tasks[1]["result"] == {"n": 1}
    assert_counters_match_ledger(job_id)


def _made_up(job_id: int, real: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A result for every task, with replies of the right stream and consumer but
    sequences that are not the task's: another task's, or none in the stream."""
    by_task = {i["task"]: i for i in real}
    n = len(by_task)
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    seq_of = {t: int(i["reply"].split(".")[5]) for t, i in by_task.items()}
    names = JobNames.of(get_settings().namespace, job_id)
    now_ns = time.time_ns()
    items = []
    for t in range(n):
        seq = seq_of[(t + 1) % n] if t % 2 else 10_000 + t
        items.append(
            {
                "task": t,
                "status": "done",
                "result": {"forged": True},
                "error": None,
                "reply": f"$JS.ACK.{names.stream}.{names.consumer}.1.{seq}.{seq}.{now_ns}.0",
                "deliveries": 1,
            }
        )
    return items


def test_a_signed_batch_with_made_up_replies_counts_nothing(tmp_path: Path) -> None:
    job_id = make_started_job(10)
    real = pull_results(job_id, 10)
    with LocalSystem(workers=1, processors=0, log_dir=tmp_path):
        send_results(job_id, _made_up(job_id, real), "")
        deadline = time.monotonic() + 60
        while not _rejected_events(job_id) and jobsys.get_job(job_id).status == "started":
            assert time.monotonic() < deadline, "the worker never handled the batch"
            time.sleep(0.1)
        assert jobsys.get_job(job_id).status == "started"
        assert counters(job_id)["done"] == 0
        assert _rejected_events(job_id)[0]["count"] == 10
        # The real results still count, sent the same way.
        send_results(job_id, real, "")
        final = wait_until_final(job_id, timeout=60)
    assert (final.status, final.done) == ("success", 10)
    assert all(t["result"] != {"forged": True} for t in _tasks(job_id).values())
    assert_counters_match_ledger(job_id)


def _recorded_seqs(job_id: int) -> dict[int, int]:
    """Where the ledger says each task's message sits (NULL standing for task_no + 1)."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, coalesce(stream_seq, task_no + 1) AS seq FROM job_tasks "
            "WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return {r["task_no"]: r["seq"] for r in rows}


def _seqs_in_stream(job_id: int) -> dict[int, int]:
    """Where each task message of the job's stream sits: {task: sequence}."""
    return dict(messages_in_stream(job_id))


def test_each_task_records_where_its_message_sits_and_a_refill_keeps_it_true() -> None:
    job_id = make_started_job(20)
    first = _seqs_in_stream(job_id)
    assert sorted(first) == list(range(20))
    assert _recorded_seqs(job_id) == first

    # A fill that died after publishing, before recording (no place known): run
    # again within the duplicate window, nothing is stored twice and the PubAcks
    # name the originals.
    with connection() as conn:
        conn.execute("UPDATE job_tasks SET stream_seq = 0 WHERE job_id = %s", (job_id,))
        conn.execute("UPDATE jobs SET published_count = 0 WHERE id = %s", (job_id,))
    assert run_bootstrap(job_id) == "published"
    assert _seqs_in_stream(job_id) == first
    assert _recorded_seqs(job_id) == first

    # NATS lost the stream; the refill republishes the pending tasks elsewhere.
    process_results.fn(job_id, [i for i in pull_results(job_id, 20) if i["task"] < 5])
    names = JobNames.of(get_settings().namespace, job_id)
    assert bridge().run(lambda nc, js: js.delete_stream(names.stream))
    assert run_bootstrap(job_id) == "published"
    second = _seqs_in_stream(job_id)
    assert sorted(second) == list(range(5, 20))
    recorded = _recorded_seqs(job_id)
    assert {t: recorded[t] for t in second} == second
    process_results.fn(job_id, pull_results(job_id, 15))
    assert (jobsys.get_job(job_id).status, counters(job_id)["done"]) == ("success", 20)


def test_a_result_whose_task_has_no_known_place_counts_only_if_its_message_is_the_tasks() -> None:
    # As for a task published before migration 010, or after its stream was
    # re-created and before it is republished.
    job_id = make_started_job(3)
    with connection() as conn:
        conn.execute("UPDATE job_tasks SET stream_seq = 0 WHERE job_id = %s", (job_id,))
    real = {i["task"]: i for i in pull_results(job_id, 3)}
    swapped = [{**real[0], "reply": real[1]["reply"]}, {**real[1], "reply": real[0]["reply"]}]
    process_results.fn(job_id, swapped)
    assert counters(job_id)["done"] == 0
    assert "another task's message" in str(_rejected_events(job_id)[0]["reasons"])

    process_results.fn(job_id, list(real.values()))
    assert (jobsys.get_job(job_id).status, counters(job_id)["done"]) == ("success", 3)
    assert_counters_match_ledger(job_id)


def test_one_message_reported_twice_counts_once_and_both_replies_are_acked() -> None:
    job_id = make_started_job(2)
    first = pull_results(job_id, 2)
    # Handed back and delivered again while its first result is in flight.
    bridge().run(lambda nc, js: nc.publish(first[0]["reply"], b"-NAK"))
    again = pull_results(job_id, 1)
    assert [i["task"] for i in again] == [first[0]["task"]]
    assert again[0]["reply"] != first[0]["reply"]
    applied = apply_results(
        ResultBatch.model_validate({"job_id": job_id, "results": first + again}), lookup_tasks
    )
    assert (applied.moved_done, len(applied.ack), applied.rejected) == (2, 3, [])
    assert jobsys.get_job(job_id).status == "success"


def test_a_reply_naming_where_an_unpublished_task_would_sit_counts_nothing() -> None:
    # Tasks 2 and 3 not published, and not placed by the fill either (their
    # chunk is not yet read): their place in a fresh stream is predictable
    # (task_no + 1), but nothing is there.
    job_id = make_started_job(4)
    names = JobNames.of(get_settings().namespace, job_id)

    async def unpublish(nc: Any, js: Any) -> None:
        for seq in (3, 4):
            await js.delete_msg(names.stream, seq)

    bridge().run(unpublish)
    with connection() as conn:
        conn.execute(
            "UPDATE jobs SET published_count = 2, placed_count = 2 WHERE id = %s", (job_id,)
        )
    real = pull_results(job_id, 2)
    made_up = [
        {**real[0], "task": t, "result": {"forged": True},
         "reply": real[0]["reply"].replace(".1.1.", f".1.{t + 1}.", 1)}
        for t in (2, 3)
    ]  # fmt: skip
    assert [int(i["reply"].split(".")[5]) for i in made_up] == [3, 4]
    process_results.fn(job_id, made_up)
    assert counters(job_id)["done"] == 0
    assert _rejected_events(job_id)[0]["tasks"] == [2, 3]
    jobsys.cancel(job_id)  # its tasks 0 and 1 are still to be delivered


def _placed(job_id: int) -> tuple[int, int]:
    with connection() as conn:
        row = conn.execute(
            "SELECT published_count, placed_count FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
    return row["published_count"], row["placed_count"]


def test_results_that_beat_their_chunks_pubacks_count_in_one_statement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A first fill into a fresh stream places each chunk before publishing it;
    # results that come back before the chunk's PubAcks are compared (here:
    # published_count not yet moved) are counted without a stream lookup.
    job_id = make_started_job(20)
    assert _placed(job_id) == (20, 20)
    with connection() as conn:
        conn.execute("UPDATE jobs SET published_count = 0 WHERE id = %s", (job_id,))
    with caplog.at_level(logging.INFO, logger="jobsys.recording.binding"):
        process_results.fn(job_id, pull_results(job_id, 20))
    assert [r.message for r in caplog.records if "checked against" in r.message] == []
    assert (jobsys.get_job(job_id).status, counters(job_id)["done"]) == ("success", 20)
    assert_counters_match_ledger(job_id)


def test_a_fill_forgets_the_places_a_fill_before_it_guessed() -> None:
    # A fill that died with a chunk placed but not published: the next fill does
    # not trust that guess (the stream it finds may hold something else).
    job_id = make_started_job(4)
    with connection() as conn:
        conn.execute("UPDATE jobs SET placed_count = 99 WHERE id = %s", (job_id,))
    assert run_bootstrap(job_id) == "published"
    assert _placed(job_id) == (4, 4)
    jobsys.cancel(job_id)
