"""Graceful shutdown: SIGTERM to a processor or a worker mid-job loses no work.

Each test runs a real worker and processor (JSON logs), sends SIGTERM to one
of them while a job of sleeping tasks is half done, checks it exits 0 on its
own, starts a replacement, and checks the job still ends `success` with its
counters equal to the ledger. The logs of every process must be one JSON
object per line, the job's lines carrying its id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.ops.runner import LocalSystem
from tests.helpers import assert_counters_match_ledger, ledger

TASKS = 80
SLEEP_MS = 100
# Bounds, not measurements: a graceful stop that hangs fails the test.
EXIT_WITHIN_S = 60
PROGRESS_WITHIN_S = 120


@pytest.fixture
def json_system(tmp_path: Path) -> Iterator[LocalSystem]:
    system = LocalSystem(
        workers=1, processors=1, concurrency=4, log_dir=tmp_path,
        env={"JOBSYS_LOG_FORMAT": "json"},
    )  # fmt: skip
    with system:
        yield system


def _sleepy_job(name: str) -> int:
    items = (json.dumps({"n": i, "sleep_ms": SLEEP_MS}) for i in range(TASKS))
    return jobsys.submit("echo", items, name=name).id


def _wait_for_progress(job_id: int, system: LocalSystem) -> None:
    """Until some tasks are done and some still pending."""
    deadline = time.monotonic() + PROGRESS_WITHIN_S
    while time.monotonic() < deadline:
        system.check_alive()
        if jobsys.get_job(job_id).done >= 4:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} made no progress")


def _terminate(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=EXIT_WITHIN_S)


def _json_lines(log_dir: Path) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for path in sorted(log_dir.glob("*.log")):
        for text in path.read_text().splitlines():
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:
                    raise AssertionError(f"{path.name}: not a JSON log line: {text!r}") from None
    return lines


def test_sigterm_to_the_processor_mid_job_hands_work_back_and_loses_nothing(
    json_system: LocalSystem, tmp_path: Path
) -> None:
    job_id = _sleepy_job("processor sigterm")
    _wait_for_progress(job_id, json_system)

    assert _terminate(json_system.processors[0]) == 0
    # The job needed the replacement: the stopped processor did not run it all.
    assert ledger(job_id)["pending"] > 0

    json_system.start_processor()
    final = wait_until_final(job_id, timeout=180)
    assert (final.status, final.done, final.failed, final.lost) == ("success", TASKS, 0, 0)
    assert_counters_match_ledger(job_id)

    lines = _json_lines(tmp_path)
    events = [line["event"] for line in lines]
    assert "processor stopped" in events
    # The job's status moves are log lines too, with its id (and rows in job_events).
    assert any(
        line["event"] == "status" and line.get("job_id") == job_id and line.get("to") == "success"
        for line in lines
    )


def test_sigterm_to_the_worker_mid_job_finishes_or_requeues_its_messages(
    json_system: LocalSystem, tmp_path: Path
) -> None:
    job_id = _sleepy_job("worker sigterm")
    _wait_for_progress(job_id, json_system)

    assert _terminate(json_system.workers[0]) == 0
    # The processor keeps sending result batches to Redis; they wait there.
    json_system.start_worker()
    final = wait_until_final(job_id, timeout=180)
    assert (final.status, final.done, final.failed, final.lost) == ("success", TASKS, 0, 0)
    assert_counters_match_ledger(job_id)

    events = [line["event"] for line in _json_lines(tmp_path)]
    assert "worker stopped" in events
