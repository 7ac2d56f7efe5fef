"""Hook receivers that trickle, hang or answer huge bodies cost the deployment nothing:
a job submitted meanwhile starts and finishes as it would without them, each delivery
ends at its deadline, and a worker's memory does not grow with an answer's size. Real
worker and processor processes, real local HTTP receivers (tests/badreceivers.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import jobsys
from jobsys.api.items import counted_items
from jobsys.api.read import hook_state, wait_until_final
from jobsys.hooks.deliver import deliver
from jobsys.ops.runner import LocalSystem
from jobsys.settings import get_settings, origin_of
from jobsys.worker.actors import process_results
from tests.badreceivers import BadReceiver, Mode
from tests.helpers import events_of, leave_only, make_started_job, pull_results
from tests.hookserver import HookServer

SLOW_HOOKS = 8
# The unrelated job: it finishes in a few seconds without slow hooks around.
BIG_JOB = 2_000
# Liveness bound, not a speed claim: on main this job stayed queued for ever.
BIG_JOB_WITHIN_S = 120
HOOK_TIMEOUT_S = 3
# A huge answer: on main the worker read it whole (RSS grew by as much).
HUGE_BYTES = 300 * 1024 * 1024
# Peak RSS a worker may reach while answers of HUGE_BYTES come in (it starts at ~80 MB).
WORKER_PEAK_RSS_MB = 200


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _beside_slow_receivers(tmp_path: Path, mode: Mode) -> list[int]:
    """SLOW_HOOKS jobs whose hooks go to `mode` receivers, then an unrelated BIG_JOB-task
    job: it must finish; returns the hooked jobs."""
    env = {"JOBSYS_HOOK_TIMEOUT_S": str(HOOK_TIMEOUT_S), "JOBSYS_HOOK_BACKOFF_S": "1"}
    leave_only(0)  # this test's processes serve its jobs alone
    with BadReceiver(mode) as receiver:
        hooked = [
            jobsys.submit("echo", counted_items(1), on_complete=receiver.url).id
            for _ in range(SLOW_HOOKS)
        ]
        with LocalSystem(workers=1, threads=8, processors=1, log_dir=tmp_path, env=env):
            receiver.wait_requests(SLOW_HOOKS, timeout=120)
            started = time.monotonic()
            big = jobsys.submit("echo", counted_items(BIG_JOB))
            final = wait_until_final(big.id, timeout=BIG_JOB_WITHIN_S)
            took = time.monotonic() - started
            print(f"\n{BIG_JOB}-task job beside {SLOW_HOOKS} {mode} receivers: {took:.1f} s "
                  f"(their requests so far: {receiver.requests})")  # fmt: skip
            assert final.status == "success", final
            if mode == "trickle_head":
                # Every attempt ended at its deadline, saying so.
                for job_id in hooked:
                    _wait(
                        lambda j=job_id: events_of(j, "hook_failed"), 60, f"job {job_id}'s attempt"
                    )
                    first = events_of(job_id, "hook_failed")[0]
                    assert first["error"] == f"no answer within {HOOK_TIMEOUT_S:g} s", first
        # No connection left open by the worker: each attempt let go of its receiver.
        _wait(lambda: receiver.open == 0, 30, "the receivers' connections to close")
    return hooked


def test_trickling_hook_receivers_never_hold_up_an_unrelated_job(tmp_path: Path) -> None:
    # The receivers answer 200 at once, then one byte of body every 2 s: the
    # status is the delivery, the body is never read.
    hooked = _beside_slow_receivers(tmp_path, "trickle")
    for job_id in hooked:
        assert (hook_state(job_id) or {}).get("state") == "delivered"


def test_receivers_that_never_finish_their_headers_fail_at_the_deadline(tmp_path: Path) -> None:
    # One byte of header every 2 s: no read ever waits HOOK_TIMEOUT_S, the
    # whole attempt does.
    _beside_slow_receivers(tmp_path, "trickle_head")


@pytest.mark.parametrize("status", [200, 500])
def test_a_huge_hook_answer_is_not_read_into_the_worker(tmp_path: Path, status: int) -> None:
    leave_only(0)
    env = {"JOBSYS_HOOK_MAX_ATTEMPTS": "1"}
    with (
        BadReceiver("huge", huge_bytes=HUGE_BYTES, status=status) as receiver,
        LocalSystem(workers=1, processors=1, log_dir=tmp_path, env=env) as system,
    ):
        view = jobsys.submit("echo", counted_items(5), on_complete=receiver.url)
        assert wait_until_final(view.id, timeout=120).status == "success"
        want = "delivered" if status == 200 else "failed"
        _wait(lambda: (hook_state(view.id) or {}).get("state") == want, 60, "the attempt")
        peak = _peak_rss_mb(system.workers[0].pid)
        print(f"\nworker peak RSS with a {HUGE_BYTES >> 20} MB answer ({status}): {peak:.0f} MB; "
              f"receiver sent {receiver.sent >> 20} MB before the worker left")  # fmt: skip
        assert peak < WORKER_PEAK_RSS_MB
    if status == 500:
        (event,) = events_of(view.id, "hook_gave_up")
        assert event["error"].startswith("HTTP 500: xxxx")


def test_a_job_without_tasks_sends_its_hook_at_once(tmp_path: Path) -> None:
    # No scheduler runs: only the follow-up of the final transition can send it.
    with HookServer() as server, LocalSystem(workers=1, processors=0, log_dir=tmp_path):
        view = jobsys.submit("echo", counted_items(0), on_complete=server.url)
        (got,) = server.wait_accepted(1, timeout=60)
    assert got.body["job_id"] == view.id and got.body["status"] == "success"
    assert got.body["total"] == 0
    assert hook_state(view.id)["state"] == "delivered"  # type: ignore[index]


def test_a_receiver_gets_the_headers_of_its_origin_and_no_other() -> None:
    with HookServer() as server, HookServer() as other:
        headers = {origin_of(server.url): {"Authorization": "Bearer S3cret"}}
        s = get_settings().model_copy(update={"hook_headers": SecretStr(json.dumps(headers))})
        for receiver in (server, other):
            job_id = make_started_job(2, on_complete=receiver.url)
            process_results.fn(job_id, pull_results(job_id, 2))
            assert deliver(job_id, s) == "delivered"
        ((got,), (elsewhere,)) = server.received, other.received
    assert got.headers["Authorization"] == "Bearer S3cret"
    assert "Authorization" not in elsewhere.headers
    assert got.headers["Idempotency-Key"] == f"job-{got.body['job_id']}"
