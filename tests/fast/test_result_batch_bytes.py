"""Result batches are sealed by bytes as well as by count (jobsys.processor.outbox,
jobsys.processor.remote). No server.

With a count alone, 250 results of 1 MB made one 250 MB Dramatiq message (and a
remote processor's report of 1,000 such results went far past the server's
body limit); the size of each result is known where it is checked
(jobsys.processor.calls) and travels with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from jobsys.pipelines.registry import pipeline
from jobsys.processor.calls import DONE, FAILED, Runner
from jobsys.processor.keepalive import KeepAlive
from jobsys.processor.outbox import ITEM_WIRE_BYTES, Outbox, failure_size
from jobsys.processor.remote import TOO_LARGE_ERROR, Reports, too_large_failure
from jobsys.settings import Settings, reset_settings

JOB = 3
BATCH_BYTES = 10_000
RESULT_BYTES = 4_000


def _settings(**values: Any) -> Settings:
    return Settings.model_construct(result_batch_bytes=BATCH_BYTES, **values)


def _outbox(batch_size: int) -> Outbox:
    return Outbox(_settings(), KeepAlive(None), batch_size=batch_size, notify_subject=str)  # type: ignore[arg-type]


def test_big_results_seal_a_batch_long_before_its_count() -> None:
    outbox = _outbox(batch_size=1_000)
    for i in range(9):
        outbox.add_item(JOB, {"task": i, "status": "done"}, f"r.{i}", size=RESULT_BYTES)
    # 4,200 bytes each: the third passes 10,000.
    assert [len(h.results) for h in outbox.held.values()] == [3, 3, 3]


def test_small_results_still_go_by_count() -> None:
    outbox = _outbox(batch_size=20)
    for i in range(40):
        outbox.add_item(JOB, {"task": i, "status": "done"}, f"r.{i}", size=10)
    assert [len(h.results) for h in outbox.held.values()] == [20, 20]


def test_one_result_over_the_bytes_goes_alone() -> None:
    outbox = _outbox(batch_size=1_000)
    outbox.add_item(JOB, {"task": 0, "status": "done"}, "r.0", size=BATCH_BYTES * 5)
    assert [len(h.results) for h in outbox.held.values()] == [1]


def test_failures_count_their_texts() -> None:
    item = {"task": 1, "status": "failed", "error": "e" * 300, "error_trace": "t" * 700}
    assert failure_size(item) == 1_000
    remote_item = {"status": "failed", "error": "e" * 10, "traceback": None}
    assert failure_size(remote_item) == 10


def test_a_remote_processors_report_is_sealed_by_bytes() -> None:
    reports = Reports(None, _settings(max_held_results=10_000), batch_size=1_000)  # type: ignore[arg-type]
    for i in range(5):
        reports.add(JOB, {"lease": f"h{i}", "status": "done", "result": {}}, RESULT_BYTES)
    sealed = [len(items) for _, items in reports._sealed]
    assert sealed == [3]  # the 4th and 5th wait for more, or for the flush timer
    assert RESULT_BYTES * 3 + ITEM_WIRE_BYTES * 3 >= BATCH_BYTES


@pipeline("tests-fast-sized", batch_size=4)
def _sized(payloads: list[dict[str, Any]]) -> list[Any]:
    return [{"pad": "x" * p["n"]} for p in payloads]


@pytest.fixture
def allowed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This module's pipelines may be resolved by name."""
    monkeypatch.setenv("JOBSYS_PIPELINE_MODULES", __name__)
    reset_settings()
    yield
    reset_settings()


@pytest.mark.usefixtures("allowed")
def test_the_runner_reports_each_results_length_as_json() -> None:
    got: list[tuple[int, str, Any, int]] = []
    payloads = [json.dumps({"n": n}).encode() for n in (0, 10, 5_000)]
    Runner().run(f"{__name__}:_sized", payloads, 1_000_000, lambda *a: got.append(a))
    assert [(i, kind) for i, kind, _, _ in got] == [(0, DONE), (1, DONE), (2, DONE)]
    for _, _, value, size in got:
        assert size == len(json.dumps(value))
    # A result over the limit is that task's failure, with no size.
    Runner().run(f"{__name__}:_sized", payloads[2:], 100, lambda *a: got.append(a))
    assert got[-1][1] == FAILED and got[-1][3] == 0


def test_an_outcome_too_large_for_the_server_becomes_its_tasks_failure_once() -> None:
    done = {"lease": "h1", "task": 4, "status": "done", "result": {"pad": "x"}}
    failure = too_large_failure(done)
    assert failure is not None
    assert failure["status"] == "failed" and "result" not in failure
    assert (failure["lease"], failure["task"], failure["transient"]) == ("h1", 4, False)
    assert failure["error"] == TOO_LARGE_ERROR
    # Already cut down, or a hand-back: nothing smaller to send.
    assert too_large_failure(failure) is None
    assert too_large_failure({"lease": "h2", "status": "handback"}) is None


def test_a_remote_processor_seals_smaller_reports_after_one_was_too_large() -> None:
    reports = Reports(None, _settings(max_held_results=10_000), batch_size=1_000)  # type: ignore[arg-type]
    for i in range(3):
        result = {"pad": "x" * RESULT_BYTES}
        reports.add(JOB, {"lease": f"h{i}", "status": "done", "result": result}, RESULT_BYTES)
    refused = reports._sealed[0][1]
    reports._shrink(JOB, refused, "413")
    assert [len(items) for _, items in reports._sealed] == [1, 2]
    # Half the refused report's bytes as JSON.
    half = len(json.dumps({"results": refused}, separators=(",", ":"))) // 2
    assert RESULT_BYTES < half < BATCH_BYTES // 2 + RESULT_BYTES
    assert reports.max_bytes == half
    # A report refused that was sealed before, bigger, does not shrink it more.
    reports._shrink(JOB, refused * 3, "413")
    assert reports.max_bytes == half
    # One outcome alone too large leaves the bytes as they are.
    reports._shrink(JOB, reports._sealed[0][1], "413")
    assert reports.max_bytes == half
