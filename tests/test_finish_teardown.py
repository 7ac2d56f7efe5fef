"""A job made final by its last result batch has its stream deleted by the worker
that recorded the batch, not by a teardown message (issue 20: a small job's
fourth Dramatiq message). Where that deletion cannot happen, the teardown
message is sent as before, and a crash in between leaves a stray the
reconciler deletes (tests/test_reconciler.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import jobsys
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.settings import get_settings
from jobsys.worker import actors
from jobsys.worker.actors import process_results
from tests.helpers import (
    assert_counters_match_ledger,
    events_of,
    make_started_job,
    pull_results,
    stream_exists,
)

TEARDOWN_WITHIN_S = 60


def test_the_batch_that_finishes_a_job_deletes_its_stream_then_and_there() -> None:
    job_id = make_started_job(3)
    items = pull_results(job_id, 3)
    # No worker runs here: a teardown message would still be waiting in Redis.
    process_results.fn(job_id, items)
    assert jobsys.get_job(job_id).status == "success"
    assert not stream_exists(job_id)
    stream = JobNames.of(get_settings().namespace, job_id).stream
    assert events_of(job_id, "stream_deleted") == [{"stream": stream, "reason": "finished"}]
    assert_counters_match_ledger(job_id)


def test_a_batch_that_does_not_finish_its_job_leaves_the_stream() -> None:
    job_id = make_started_job(3)
    process_results.fn(job_id, pull_results(job_id, 2))
    assert jobsys.get_job(job_id).status == "started"
    assert stream_exists(job_id)
    assert events_of(job_id, "stream_deleted") == []
    jobsys.cancel(job_id)


def test_when_nats_fails_after_the_final_commit_the_teardown_message_still_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = make_started_job(3)
    items = pull_results(job_id, 3)

    async def nats_gone(*args: object) -> bool:
        raise ConnectionError("NATS went away")  # as the bridge raises on a lost connection

    # The batch that finished the job deletes its stream before anything else.
    monkeypatch.setattr(actors, "delete_job_stream", nats_gone)
    with pytest.raises(ConnectionError):
        process_results.fn(job_id, items)
    monkeypatch.undo()
    assert jobsys.get_job(job_id).status == "success"
    assert stream_exists(job_id)
    # The teardown message sent in its place waits in Redis for a worker.
    with LocalSystem(workers=1, processors=0, log_dir=tmp_path / "logs"):
        end = time.monotonic() + TEARDOWN_WITHIN_S
        while stream_exists(job_id):
            assert time.monotonic() < end, "the teardown message never came"
            time.sleep(0.1)
    stream = JobNames.of(get_settings().namespace, job_id).stream
    assert events_of(job_id, "stream_deleted") == [{"stream": stream, "reason": "teardown"}]
