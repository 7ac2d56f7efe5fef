"""Priorities and weights: how one processor's execution slots are shared among jobs.

Real worker and processor processes; each `stamp` task (tests.pipelines)
keeps a slot ~50 ms and records when it started, so the share each job got
is read from the results, in the window where both jobs had work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobsys
from jobsys.api.items import counted_items
from jobsys.api.read import get_job, wait_until_final
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.pg.events import read_events
from tests.test_cli import jobsys_cli

STAMP = "tests.pipelines:stamp"
# Liveness bounds, far above what the jobs take (a few seconds each).
FINAL_TIMEOUT_S = 180.0
RUNNING_TIMEOUT_S = 60.0
# How far a measured share may be from the one asked for.
TOLERANCE = 0.10


@pytest.fixture
def four_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """One worker and one processor with 4 execution slots (the jobs share them)."""
    log_dir = tmp_path_factory.mktemp("logs")
    with LocalSystem(workers=1, processors=1, concurrency=4, log_dir=log_dir) as system:
        yield system


def starts(job_id: int) -> list[float]:
    """When each of the job's tasks started (wall clock), in order."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT (result->>'started')::float8 AS t FROM job_tasks "
            "WHERE job_id = %s AND status = 'done' ORDER BY 1",
            (job_id,),
        ).fetchall()
    return [r["t"] for r in rows]


def share_between(a: list[float], b: list[float], since: float, until: float) -> float:
    """The fraction of task starts in [since, until] that were `a`'s."""
    na = sum(since <= t <= until for t in a)
    nb = sum(since <= t <= until for t in b)
    assert na + nb >= 40, f"too few starts in the window to judge a share ({na}+{nb})"
    return na / (na + nb)


def wait_running(job_id: int, done: int = 8) -> None:
    deadline = time.monotonic() + RUNNING_TIMEOUT_S
    while get_job(job_id).done < done:
        assert time.monotonic() < deadline, f"job {job_id} never ran"
        time.sleep(0.05)


def test_weights_three_and_one_share_the_slots_three_to_one(four_slots: LocalSystem) -> None:
    heavy = jobsys.submit(STAMP, counted_items(300), name="w3", weight=3).id
    light = jobsys.submit(STAMP, counted_items(300), name="w1", weight=1).id
    for job_id in (heavy, light):
        assert wait_until_final(job_id, timeout=FINAL_TIMEOUT_S).status == "success"
    a, b = starts(heavy), starts(light)
    # Both have work from the later first start to the earlier last start.
    share = share_between(a, b, max(a[0], b[0]), min(a[-1], b[-1]))
    assert share == pytest.approx(0.75, abs=TOLERANCE), f"weight 3 got {share:.0%} of the slots"


def test_a_priority_job_takes_the_slots_as_they_free_up(four_slots: LocalSystem) -> None:
    low = jobsys.submit(STAMP, counted_items(400), name="p0").id
    wait_running(low)
    high = jobsys.submit(STAMP, counted_items(80), name="p1", priority=1).id
    for job_id in (high, low):
        assert wait_until_final(job_id, timeout=FINAL_TIMEOUT_S).status == "success"
    a, b = starts(high), starts(low)
    # Every priority-1 task started before the remaining priority-0 ones ...
    assert a[-1] < b[-1]
    left_after = sum(t > a[-1] for t in b)
    assert left_after > 100, f"only {left_after} priority-0 tasks were left to start after"
    # ... and while it had work it had (nearly) every slot: the priority-0 tasks
    # that started meanwhile are those already running when it came, and the
    # odd slot its queue was empty for between two fetches.
    share = share_between(a, b, a[0], a[-1])
    assert share >= 1 - TOLERANCE, f"priority 1 got only {share:.0%} of the slots"


def test_set_changes_a_running_jobs_share(four_slots: LocalSystem, tmp_path: Path) -> None:
    first = jobsys.submit(STAMP, counted_items(500), name="a").id
    second = jobsys.submit(STAMP, counted_items(500), name="b").id
    wait_running(first, 40)
    wait_running(second, 40)
    out = jobsys_cli("set", str(first), "--weight", "4", "--json", check=True)
    changed_at = time.time()
    said = json.loads(out.stdout)
    assert (said["weight"], said["was_weight"], said["status"]) == (4, 1, "started")
    for job_id in (first, second):
        assert wait_until_final(job_id, timeout=FINAL_TIMEOUT_S).status == "success"
    a, b = starts(first), starts(second)
    before = share_between(a, b, max(a[0], b[0]), changed_at)
    assert before == pytest.approx(0.5, abs=TOLERANCE), f"equal weights gave {before:.0%}"
    # The processor hears of it through the stream's update within a moment.
    after = share_between(a, b, changed_at + 0.5, min(a[-1], b[-1]))
    assert after == pytest.approx(0.8, abs=TOLERANCE), f"weight 4 of 5 got {after:.0%}"
    # Shown and recorded; a final job is refused in one line.
    status = json.loads(jobsys_cli("status", str(first), "--json", check=True).stdout)
    assert (status["priority"], status["weight"]) == (0, 4)
    events = [e for e in read_events(first) if e["event"] == "job_share_set"]
    assert [(e["detail"]["weight"], e["detail"]["was_weight"]) for e in events] == [(4, 1)]
    refused = jobsys_cli("set", str(first), "--priority", "3")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        f"jobsys: job {first} is success: its share cannot change"
    ]


def jobs_count() -> int:
    with connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM jobs").fetchone()
    assert row is not None
    return int(row["n"])


def test_bad_priorities_and_weights_are_refused_at_every_entry_before_anything_is_written() -> None:
    before = jobs_count()
    for options, said in [
        ({"priority": 1.5}, "priority: must be an integer, not 1.5"),
        ({"priority": float("inf")}, "priority: must be a finite integer, not inf"),
        ({"weight": 0}, "weight: must be between 1 and 1000, not 0"),
        ({"weight": "3"}, "weight: must be an integer, not str"),
    ]:
        with pytest.raises(jobsys.InvalidInput) as refused:
            jobsys.submit("echo", counted_items(1), **options)  # type: ignore[arg-type]
        assert str(refused.value) == said
    for args in (["--priority", "1.5"], ["--weight", "0"], ["--priority", "nan"]):
        answer = jobsys_cli("submit", "echo", "--count", "1", *args)
        assert answer.returncode == 2, answer.stderr
        assert answer.stderr.strip().splitlines()[-1].startswith("Error: Invalid value for '--")
    assert jobs_count() == before


def test_set_on_a_queued_job_changes_only_its_share_and_says_who_from_what() -> None:
    # No worker runs here: the job stays queued (bootstrap will describe its
    # stream from the row as it is then).
    job_id = jobsys.submit("echo", counted_items(3), priority=2, weight=5).id
    listed = json.loads(jobsys_cli("list", "--json", check=True).stdout)
    assert [(j["priority"], j["weight"]) for j in listed if j["job_id"] == job_id] == [(2, 5)]
    table = jobsys_cli("list", check=True).stdout
    assert "prio" in table and "weight" in table
    before = get_job(job_id)
    result = jobsys.set_share(job_id, priority=-1)
    assert (result.priority, result.weight, result.was_priority) == (-1, 5, 2)
    assert not result.stream_updated
    after = get_job(job_id)
    assert (after.priority, after.weight) == (-1, 5)
    assert after.model_dump(exclude={"priority"}) == before.model_dump(exclude={"priority"})
    [event] = [e for e in read_events(job_id) if e["event"] == "job_share_set"]
    assert event["detail"] == {"priority": -1, "weight": 5, "was_priority": 2, "was_weight": 5}
    unknown = jobsys_cli("set", "99999999", "--weight", "2")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "jobsys: job 99999999 not found"
    nothing = jobsys_cli("set", str(job_id))
    assert nothing.returncode == 2 and "give --priority N and/or --weight W" in nothing.stderr
    jobsys.cancel(job_id)
