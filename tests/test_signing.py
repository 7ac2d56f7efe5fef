"""Only messages signed with the deployment's secret make a worker act.

Attacks with Redis access only, against a real worker process: a forged
result batch (made-up ack subjects of a real job's stream) and a batch signed
with the wrong secret are recorded and dropped; nothing is counted or acked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import dramatiq
import pytest

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.dramatiq.broker import RESULTS_QUEUE, setup_broker
from jobsys.dramatiq.messages import PROCESS_RESULTS, send_results
from jobsys.dramatiq.signing import SIGNATURE_OPTION, signature
from jobsys.nats.subjects import JobNames
from jobsys.ops.doctor import check_secret
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.settings import Settings, get_settings
from tests.helpers import counters, make_started_job, pull_results

REPO = Path(__file__).resolve().parent.parent


def _forged_items(job_id: int, total: int) -> list[dict[str, Any]]:
    """Results for every task with reply subjects made up from the job's stream names."""
    names = JobNames.of(get_settings().namespace, job_id)
    now_ns = time.time_ns()
    return [
        {
            "task": i,
            "status": "done",
            "result": {"forged": True},
            "error": None,
            "reply": f"$JS.ACK.{names.stream}.{names.consumer}.1.{i + 1}.{i + 1}.{now_ns}.0",
            "deliveries": 1,
        }
        for i in range(total)
    ]


def _enqueue_raw(
    job_id: int, items: list[dict[str, Any]], options: dict[str, Any], notify: str | None = None
) -> None:
    """What an attacker with Redis access does: enqueue a message by hand."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=RESULTS_QUEUE,
        actor_name=PROCESS_RESULTS,
        args=(job_id, items, notify),
        kwargs={},
        options=options,
    )
    setup_broker().enqueue(message)


def _rejections(job_id: int) -> list[dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT detail FROM job_events WHERE job_id = %s AND event = 'message_rejected' "
            "ORDER BY id",
            (job_id,),
        ).fetchall()
    return [r["detail"] for r in rows]


def _wait_for_rejections(job_id: int, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := _rejections(job_id)) < n:
        assert time.monotonic() < deadline, f"worker recorded {len(found)} rejections, not {n}"
        time.sleep(0.1)
    return found


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="unsigned"),
        pytest.param(
            {SIGNATURE_OPTION: "0" * 64},
            id="garbage-signature",
        ),
    ],
)
def test_a_forged_batch_via_redis_is_dropped_and_finishes_nothing(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    job_id = make_started_job(10)
    with LocalSystem(workers=1, processors=0, log_dir=tmp_path):
        _enqueue_raw(job_id, _forged_items(job_id, 10), options)
        reasons = [r["reason"] for r in _wait_for_rejections(job_id, 1)]
    assert reasons == ["unsigned" if not options else "wrong signature"]
    assert jobsys.get_job(job_id).status == "started"
    assert counters(job_id)["done"] == 0
    # Nothing was acked: the real task messages are all still there to deliver.
    assert len(pull_results(job_id, 10)) == 10


def test_a_batch_signed_with_another_secret_is_dropped_and_the_real_one_counts(
    tmp_path: Path,
) -> None:
    job_id = make_started_job(10)
    items = pull_results(job_id, 10)
    other = uuid.uuid4().hex.encode()
    with LocalSystem(workers=1, processors=0, log_dir=tmp_path):
        forged_sig = signature(other, PROCESS_RESULTS, (job_id, items, None), {})
        _enqueue_raw(job_id, items, {SIGNATURE_OPTION: forged_sig})
        assert [r["reason"] for r in _wait_for_rejections(job_id, 1)] == ["wrong signature"]
        assert counters(job_id)["done"] == 0
        # The same results, sent the way jobsys sends them, are counted.
        send_results(job_id, items, "")
        final = wait_until_final(job_id, timeout=60)
    assert (final.status, final.done) == ("success", 10)


def test_a_message_signed_with_the_previous_secret_is_accepted_during_rotation(
    tmp_path: Path,
) -> None:
    job_id = make_started_job(5)
    items = pull_results(job_id, 5)
    old = uuid.uuid4().hex
    env = {"JOBSYS_SECRET_PREVIOUS": old}
    with LocalSystem(workers=1, processors=0, log_dir=tmp_path, env=env):
        sig = signature(old.encode(), PROCESS_RESULTS, (job_id, items, ""), {})
        _enqueue_raw(job_id, items, {SIGNATURE_OPTION: sig}, notify="")
        final = wait_until_final(job_id, timeout=60)
    assert (final.status, final.done) == ("success", 5)
    assert _rejections(job_id) == []


@pytest.mark.parametrize("command", [["worker"], ["process"], ["scheduler"]])
def test_a_service_without_the_secret_refuses_to_start_with_one_line(
    command: list[str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"JOBSYS_SECRET", "JOBSYS_ENV_FILE"}}
    # No env file with a secret either: run elsewhere, with no user config dir.
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *command], capture_output=True, text=True, env=env,
        timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobsys: JOBSYS_SECRET is not set: set"), lines


def test_doctor_says_whether_the_secret_is_set() -> None:
    missing = check_secret(Settings(secret=None))
    assert not missing.ok and "JOBSYS_SECRET is not set" in missing.message
    given = check_secret(Settings(secret="s3cr3t-value"))
    assert given.ok and "s3cr3t-value" not in given.message
    rotating = check_secret(Settings(secret="new", secret_previous="old"))
    assert rotating.ok and "rotation" in rotating.message
