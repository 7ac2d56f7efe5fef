"""The Python API as someone at a notebook uses it: submit dicts, get a handle, wait,
read results and failures, cancel, retry; the same from asyncio."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import jobsys
import jobsys.aio
from jobsys.errors import InvalidInput, JobsysError


def test_submit_takes_dicts_and_the_handle_waits_and_reads_results(system: object) -> None:
    job = jobsys.submit("echo", ({"n": i} for i in range(20)), name="notebook")
    assert isinstance(job, jobsys.Job) and job.id > 0
    final = job.wait(timeout=120, progress=False)
    assert (final.status, final.done) == ("success", 20)
    results = list(job.results())
    assert [r["result"] for r in results] == [{"n": i} for i in range(20)]
    assert list(job.failures()) == []
    assert jobsys.get(job.id) == job and job.status().status == "success"


def test_failures_are_the_failed_and_lost_tasks_with_their_errors(system: object) -> None:
    job = jobsys.submit("echo", [{"n": 1}, {"fail": True}], failure_threshold=1.0)
    assert job.wait(timeout=120, progress=False).status == "success"
    (failed,) = job.failures()
    assert failed["status"] == "failed" and failed["task"] == 1 and failed["error"]
    assert [r["task"] for r in job.results(status=["done", "failed"])] == [0, 1]


def test_items_may_be_json_texts_or_an_items_file_path(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"n": 1}\n{"n": 2}\n')
    assert jobsys.submit("echo", str(path)).status().total == 2
    assert jobsys.submit("echo", path).status().total == 2
    assert jobsys.submit("echo", ['{"n": 1}', b'{"n": 2}', {"n": 3}]).status().total == 3


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"x": float("nan")}, "item 2: cannot be written as strict JSON"),
        ({"x": object()}, "item 2: cannot be written as JSON: Object of type object"),
        (["not", "an", "object"], "item 2: expected a dict or JSON text, got list"),
        (7, "item 2: expected a dict or JSON text, got int"),
    ],
)
def test_an_item_that_is_not_a_json_object_is_refused_naming_it(item: Any, message: str) -> None:
    before = jobsys.list_jobs(limit=1)
    with pytest.raises(InvalidInput, match=message):
        jobsys.submit("echo", [{"ok": True}, item])
    assert jobsys.list_jobs(limit=1) == before  # nothing was created


def test_a_single_json_text_given_as_items_says_what_a_string_means() -> None:
    with pytest.raises(InvalidInput, match="a str is read as an items file"):
        jobsys.submit("echo", '{"n": 1}')


def test_items_are_streamed_not_held() -> None:
    count = 100_000

    def items() -> Iterator[dict[str, Any]]:
        for i in range(count):
            yield {"n": i, "pad": "x" * 200}

    tracemalloc.start()
    try:
        job = jobsys.submit("echo", items())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert job.status().total == count
    # Held whole, 100,000 such items take over 50 MB; streamed, a few buffers.
    assert peak < 20_000_000, f"peak {peak:,} bytes"


def test_statuses_are_lists_and_a_string_is_refused() -> None:
    job = jobsys.submit("echo", [{"n": 1}])
    job.cancel()
    for call in (
        lambda: jobsys.retry(job.id, statuses="cancelled"),  # type: ignore[arg-type]
        lambda: job.retry(statuses="cancelled"),  # type: ignore[arg-type]
        lambda: jobsys.list_tasks(job.id, statuses="cancelled"),  # type: ignore[arg-type]
        lambda: jobsys.group_errors(job.id, statuses="cancelled"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidInput, match=r"statuses: give a list, e\.g\. \['cancelled'\]"):
            call()
    with pytest.raises(InvalidInput, match=r"status: 'done,failed' .* give a list"):
        list(job.results(status="done,failed"))


def test_cancel_and_retry_through_the_handle() -> None:
    job = jobsys.submit("echo", [{"n": 1}, {"n": 2}])
    cancelled = job.cancel()
    assert cancelled.changed and job.status().status == "revoked"
    child = job.retry(statuses=["cancelled"])
    assert isinstance(child, jobsys.Job) and child != job
    view = child.status()
    assert (view.parent_id, view.total) == (job.id, 2)


def test_wait_gives_up_after_its_timeout_with_one_line() -> None:
    job = jobsys.submit("echo", [{"n": 1}])  # no worker runs here: it stays queued
    with pytest.raises(TimeoutError, match=f"job {job.id} is still queued after 0.5 s"):
        job.wait(timeout=0.5, progress=False)
    job.cancel()


def test_get_of_an_unknown_job_raises_job_not_found() -> None:
    with pytest.raises(jobsys.JobNotFound):
        jobsys.get(999_999_999)


def test_the_asyncio_api_does_the_same(system: object) -> None:
    async def items() -> AsyncIterator[dict[str, Any]]:
        for i in range(10):
            await asyncio.sleep(0)
            yield {"n": i}

    async def main() -> tuple[str, list[Any], list[Any], int]:
        job = await jobsys.aio.submit("echo", items())
        final = await job.wait(timeout=120, progress=False)
        results = [r["result"] async for r in job.results()]
        failures = [r async for r in job.failures()]
        again = await jobsys.aio.get(job.id)
        return final.status, results, failures, (await again.status()).total

    status, results, failures, total = asyncio.run(main())
    assert status == "success" and results == [{"n": i} for i in range(10)]
    assert failures == [] and total == 10


def test_a_job_handle_prints_as_its_id_and_status_is_json_ready() -> None:
    job = jobsys.submit("echo", [{"n": 1}])
    assert repr(job) == f"Job({job.id})"
    assert json.loads(job.status().model_dump_json())["job_id"] == job.id
    with pytest.raises(JobsysError):
        job.wait(timeout=0.1, progress=False)
    job.cancel()
