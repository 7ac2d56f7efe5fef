"""Real SIGKILLs of real processes mid-job: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
import signal
import time

import pytest

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.ops.runner import LocalSystem
from tests.helpers import assert_counters_match_ledger


def _sleepy(n: int, ms: int) -> list[str]:
    return [json.dumps({"n": i, "sleep_ms": ms}) for i in range(n)]


def _wait_progress(job_id: int, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while jobsys.get_job(job_id).done < at_least:
        assert time.monotonic() < deadline, "job made no progress"
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["processor", "worker"])
def test_a_process_killed_mid_job_loses_nothing(system: LocalSystem, kind: str) -> None:
    job = jobsys.submit("echo", iter(_sleepy(3000, 2)))
    _wait_progress(job.id, 500)
    procs = system.processors if kind == "processor" else system.workers
    victim = procs[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    procs.remove(victim)
    (system.start_processor if kind == "processor" else system.start_worker)()
    final = wait_until_final(job.id, timeout=180)
    assert (final.status, final.done, final.failed, final.lost) == ("success", 3000, 0, 0)
    assert_counters_match_ledger(job.id)


def test_a_new_job_is_not_starved_behind_an_old_one(system: LocalSystem) -> None:
    old = jobsys.submit("echo", iter(_sleepy(8000, 5)), name="old")
    _wait_progress(old.id, 100)
    new = jobsys.submit("echo", iter(_sleepy(20, 5)), name="new")
    final_new = wait_until_final(new.id, timeout=120)
    assert final_new.status == "success"
    # The old job has at least 8000 x 5 ms / 8 threads = 5 s of work left
    # when the new one arrives; a fair processor finishes the new one first.
    assert jobsys.get_job(old.id).status == "started"
    jobsys.cancel(old.id)
