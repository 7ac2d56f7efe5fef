"""Cancel and completion racing, with real threads, barriers, Postgres, Redis and NATS.

Each scenario runs many times in one test so an unlucky interleaving has a
chance to show up. Nothing here asserts on timing: jitter only spreads the
moment a racer starts, the assertions hold whichever order the commits take.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

import jobsys
import jobsys.bootstrap.fill
from jobsys.api.items import counted_items
from jobsys.bootstrap.start import run_bootstrap
from jobsys.dramatiq.broker import CONTROL_QUEUE
from jobsys.lifecycle.teardown import run_teardown
from jobsys.settings import get_settings
from jobsys.worker.actors import process_results
from tests.helpers import (
    assert_counters_match_ledger,
    counters,
    events_of,
    ledger,
    make_started_job,
    pull_results,
    status_events,
    stream_exists,
)

ITERATIONS = 50
BOOTSTRAP_ITERATIONS = 50


def _race(*fns: Callable[[], Any]) -> list[Any]:
    """Run each fn in its own thread, released together by a barrier; return results."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    if errors:
        raise errors[0]
    return results


def _teardowns_enqueued(job_id: int) -> int:
    """Teardown messages for `job_id` waiting in Redis (no worker runs in these tests)."""
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hvals(f"{settings.dramatiq_namespace}:{CONTROL_QUEUE}.msgs")
    finally:
        client.close()
    count = 0
    for data in raw:
        msg = json.loads(data)
        if msg.get("actor_name") == "teardown_job" and msg.get("args") == [job_id]:
            count += 1
    return count


def _torn_down_by_its_batch(job_id: int) -> None:
    """The batch that made the job final deleted its stream itself, once, and sent no
    teardown message (jobsys.lifecycle.finalize, teardowns_deferred)."""
    assert _teardowns_enqueued(job_id) == 0, "a teardown message besides the batch's deletion"
    assert not stream_exists(job_id)
    assert [e["reason"] for e in events_of(job_id, "stream_deleted")] == ["finished"]


# -- 1. cancel commits first, completion second --------------------------------


def _cancel_then_late_completion() -> None:
    job_id = make_started_job(40)
    early = pull_results(job_id, 10)
    process_results.fn(job_id, early)
    # The rest was computed before the cancel; its batch arrives after it.
    late = pull_results(job_id, 30)
    cancelled = threading.Event()

    def cancel() -> jobsys.CancelResult:
        result = jobsys.cancel(job_id)
        cancelled.set()
        return result

    def complete() -> None:
        assert cancelled.wait(30)
        process_results.fn(job_id, late)

    before = counters(job_id)
    result, _ = _race(cancel, complete)
    assert (result.status, result.changed) == ("revoked", True)
    after = counters(job_id)
    assert after == {**before, "cancelled": 30}, "the late batch moved a counter"
    assert jobsys.get_job(job_id).status == "revoked"
    assert status_events(job_id) == ["started", "canceling", "revoked"]
    assert [e["count"] for e in events_of(job_id, "late_results")] == [30]
    assert not stream_exists(job_id)
    assert_counters_match_ledger(job_id)


def test_a_completion_batch_after_cancel_committed_leaves_the_job_revoked_and_uncounted() -> None:
    for _ in range(ITERATIONS):
        _cancel_then_late_completion()


# -- 2. completion commits first, cancel second --------------------------------


def _completion_then_cancel(fail: set[int]) -> None:
    job_id = make_started_job(20)
    items = pull_results(job_id, 20, fail=fail)
    completed = threading.Event()

    def complete() -> None:
        process_results.fn(job_id, items)
        completed.set()

    def cancel() -> jobsys.CancelResult:
        assert completed.wait(30)
        return jobsys.cancel(job_id)

    _, result = _race(complete, cancel)
    outcome = "failure" if fail else "success"
    assert (result.status, result.changed) == (outcome, False)
    view = jobsys.get_job(job_id)
    assert view.status == outcome
    assert (view.done, view.failed, view.cancelled) == (20 - len(fail), len(fail), 0)
    assert status_events(job_id) == ["started", outcome]
    assert_counters_match_ledger(job_id)
    _torn_down_by_its_batch(job_id)


def test_a_cancel_after_completion_committed_changes_nothing_and_says_so() -> None:
    for i in range(ITERATIONS):
        # Alternate the outcome so both final statuses are shown to hold.
        _completion_then_cancel(fail={3} if i % 2 else set())


# -- 1+2 racing freely: whichever commits first decides ------------------------


def _cancel_racing_completion(jitter_s: float) -> str:
    job_id = make_started_job(60)
    items = pull_results(job_id, 60)

    def complete() -> None:
        process_results.fn(job_id, items)

    def cancel() -> jobsys.CancelResult:
        threading.Event().wait(jitter_s)
        return jobsys.cancel(job_id)

    _, result = _race(complete, cancel)
    view = jobsys.get_job(job_id)
    assert view.status == result.status
    if result.changed:
        # Cancel's guarded write won: the job ends revoked whatever the batch
        # did. Results that committed while it was canceling may be counted;
        # the rest are cancelled. Every task is accounted exactly once.
        assert view.status == "revoked"
        assert status_events(job_id) == ["started", "canceling", "revoked"]
        assert view.done + view.cancelled == 60
    else:
        assert view.status == "success"
        assert status_events(job_id) == ["started", "success"]
        assert (view.done, view.cancelled) == (60, 0)
    assert not stream_exists(job_id) or view.status == "success"
    assert_counters_match_ledger(job_id)
    if view.status == "success":
        _torn_down_by_its_batch(job_id)
    return f"{view.status}, {view.done} counted"


def test_cancel_racing_the_completing_batch_leaves_whichever_committed_first() -> None:
    seen: dict[str, int] = {}
    for _ in range(ITERATIONS):
        outcome = _cancel_racing_completion(random.uniform(0, 0.02))
        key = outcome.split(",")[0]
        seen[key] = seen.get(key, 0) + 1
    print(f"cancel vs completion outcomes over {ITERATIONS} runs: {seen}")


# -- 3. two batches finish the job at the same instant -------------------------


def _two_batches_finish_together() -> None:
    job_id = make_started_job(100)
    items = pull_results(job_id, 100)
    _race(
        lambda: process_results.fn(job_id, items[:50]),
        lambda: process_results.fn(job_id, items[50:]),
    )
    view = jobsys.get_job(job_id)
    assert (view.status, view.done) == ("success", 100)
    assert status_events(job_id) == ["started", "success"], "finalized more than once"
    assert events_of(job_id, "late_results") == []
    # The finishing batch deleted the stream; a teardown run after it (twice,
    # as a reconciler's and a redelivery would) deletes nothing more.
    _torn_down_by_its_batch(job_id)
    run_teardown(job_id)
    run_teardown(job_id)
    assert len(events_of(job_id, "stream_deleted")) == 1
    assert_counters_match_ledger(job_id)


def test_two_batches_finishing_the_job_at_once_finalize_and_tear_down_exactly_once() -> None:
    for _ in range(ITERATIONS):
        _two_batches_finish_together()


# -- 4. bootstrap publishing while cancel lands --------------------------------


def _bootstrap_racing_cancel(jitter_s: float) -> str:
    total = 3_000
    job_id = jobsys.submit("echo", counted_items(total)).id

    def cancel() -> jobsys.CancelResult:
        threading.Event().wait(jitter_s)
        return jobsys.cancel(job_id)

    boot, result = _race(lambda: run_bootstrap(job_id), cancel)
    assert (result.status, result.changed) == ("revoked", True)
    assert boot in {"inactive", "stopped", "published"}
    view = jobsys.get_job(job_id)
    assert view.status == "revoked"
    assert not stream_exists(job_id), f"stream left behind (bootstrap {boot})"
    assert (view.cancelled, view.done) == (total, 0)
    assert view.published <= total
    assert ledger(job_id)["pending"] == 0
    assert_counters_match_ledger(job_id)
    # A bootstrap retried later (Dramatiq redelivery) does nothing either.
    assert run_bootstrap(job_id) == "inactive"
    assert not stream_exists(job_id)
    published = "none" if view.published == 0 else "all" if view.published == total else "some"
    return f"{boot}, {published} published"


def test_a_cancel_landing_while_bootstrap_publishes_ends_revoked_with_no_stream_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small chunks: more points between chunks where the status is re-checked.
    monkeypatch.setattr(jobsys.bootstrap.fill, "PUBLISH_CHUNK", 250)
    seen: dict[str, int] = {}
    for _ in range(BOOTSTRAP_ITERATIONS):
        # Half the cancels land in the first milliseconds (around stream
        # creation), half anywhere in the publishing.
        jitter = random.uniform(0, 0.015) if random.random() < 0.5 else random.uniform(0, 0.25)
        boot = _bootstrap_racing_cancel(jitter)
        seen[boot] = seen.get(boot, 0) + 1
    print(f"bootstrap outcomes over {BOOTSTRAP_ITERATIONS} runs: {seen}")


def test_a_bootstrap_creating_its_stream_after_teardown_deleted_it_deletes_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The narrowest window, forced: bootstrap has started the job,
    # then the whole cancel (teardown included) runs before the stream is
    # created. The real NATS call is only delayed, not replaced.
    real_make = jobsys.bootstrap.fill.make_job_stream
    entered, cancelled = threading.Event(), threading.Event()

    async def make_after_cancel(*args: Any) -> Any:
        entered.set()
        await asyncio.get_running_loop().run_in_executor(None, cancelled.wait, 30)
        return await real_make(*args)

    monkeypatch.setattr(jobsys.bootstrap.fill, "make_job_stream", make_after_cancel)
    for _ in range(20):
        entered.clear()
        cancelled.clear()
        job_id = jobsys.submit("echo", counted_items(100)).id

        def cancel(job_id: int = job_id) -> jobsys.CancelResult:
            assert entered.wait(30)
            result = jobsys.cancel(job_id)
            cancelled.set()
            return result

        boot, result = _race(lambda job_id=job_id: run_bootstrap(job_id), cancel)
        assert (boot, result.status, result.changed) == ("stopped", "revoked", True)
        assert not stream_exists(job_id), "bootstrap left the stream it re-created"
        assert jobsys.get_job(job_id).published == 0
        assert_counters_match_ledger(job_id)


# -- 5. a duplicate of an already-counted batch after finalize -----------------


def _duplicate_after_finalize() -> None:
    job_id = make_started_job(30)
    items = pull_results(job_id, 30, fail={0})
    process_results.fn(job_id, items[:15])
    process_results.fn(job_id, items[15:])
    final = jobsys.get_job(job_id)
    assert final.status == "failure"
    # Both halves delivered again at the same time (Dramatiq redelivery).
    _race(
        lambda: process_results.fn(job_id, items[:15]),
        lambda: process_results.fn(job_id, items[15:]),
    )
    again = jobsys.get_job(job_id)
    assert again.model_dump() == final.model_dump()
    assert status_events(job_id) == ["started", "failure"]
    assert sorted(e["count"] for e in events_of(job_id, "late_results")) == [15, 15]
    assert_counters_match_ledger(job_id)
    _torn_down_by_its_batch(job_id)


def test_a_duplicate_of_an_already_counted_batch_after_finalize_changes_nothing() -> None:
    for _ in range(ITERATIONS):
        _duplicate_after_finalize()
