"""Completion hooks against real Postgres, Redis, NATS, worker processes and a real
local HTTP server: delivered once, retried with backoff, never for a job that is not
final, and still delivered (once) when the worker is SIGKILLed in the crash window."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import dramatiq
import pytest

import jobsys
from jobsys.api.items import counted_items
from jobsys.api.read import hook_state, wait_until_final
from jobsys.hooks.deliver import deliver
from jobsys.hooks.resend import resend_due
from jobsys.lifecycle.states import ACTIVE, Status, transition
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.reconciler import lose_tasks
from jobsys.settings import get_settings
from jobsys.worker.actors import process_results
from tests.helpers import make_started_job, pull_results
from tests.hookserver import HookServer
from tests.test_cli import jobsys_cli


def _events(job_id: int, prefix: str = "hook_") -> list[str]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT event FROM job_events WHERE job_id = %s AND event LIKE %s ORDER BY id",
            (job_id, prefix + "%"),
        ).fetchall()
    return [r["event"] for r in rows]


def _hook_row(job_id: int) -> dict[str, Any] | None:
    return hook_state(job_id)


def _finish_in_process(job_id: int, n: int) -> None:
    process_results.fn(job_id, pull_results(job_id, n))
    assert jobsys.get_job(job_id).status == "success"


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("ftp://example.com/x", "on-complete: a URL must be http:// or https://"),
        ("no_such_module_xyz:actor", "on-complete: 'no_such_module_xyz:actor' is not allowed"),
        ("tests.no_such_xyz:actor", "on-complete: cannot import module 'tests.no_such_xyz'"),
        ("tests.hook_targets:not_an_actor", "tests.hook_targets.not_an_actor is not a Dramatiq"),
        ("just-text", "is neither an http(s) URL nor module:actor"),
        ("http://", "on-complete: the URL has no host"),
        ("http://x y", "must not contain spaces"),
    ],
)
def test_submit_refuses_a_bad_hook_target_in_one_line(target: str, message: str) -> None:
    proc = jobsys_cli("submit", "echo", "--count", "2", "--on-complete", target)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_hook_is_never_delivered_for_a_job_that_is_not_final() -> None:
    with HookServer() as server:
        job_id = make_started_job(3, on_complete=server.url)
        assert jobsys.get_job(job_id).on_complete == server.url
        assert _hook_row(job_id) is None  # nothing in the outbox while started
        assert deliver(job_id) == "not_due"
        fast = get_settings().model_copy(update={"hook_resend_after_s": 0.0})
        assert job_id not in resend_due(fast).resent
        assert server.received == []
        # Revoked is final too: the cancel's revoke writes the outbox row.
        assert jobsys.cancel(job_id).status == "revoked"
        assert _hook_row(job_id)["state"] == "pending"  # type: ignore[index]
        assert deliver(job_id) == "delivered"
        (got,) = server.received
        assert got.body["status"] == "revoked" and got.body["cancelled"] == 3
        assert got.headers["Idempotency-Key"] == f"job-{job_id}"
        assert deliver(job_id) == "not_due"
    assert _events(job_id) == ["hook_due", "hook_delivered"]


def test_every_path_to_a_final_status_writes_the_outbox_row_once() -> None:
    by_results = make_started_job(3, on_complete="http://127.0.0.1:9/unused")
    _finish_in_process(by_results, 3)
    by_reconciler = make_started_job(3, on_complete="http://127.0.0.1:9/unused")
    moved, final = lose_tasks(by_reconciler, None, "idle with nothing left for NATS to deliver")
    assert (moved, final) == (3, "failure")
    by_cancel = make_started_job(3, on_complete="http://127.0.0.1:9/unused")
    jobsys.cancel(by_cancel)
    for job_id in (by_results, by_reconciler, by_cancel):
        row = _hook_row(job_id)
        assert row is not None and (row["state"], row["attempts"]) == ("pending", 0)
        assert _events(job_id) == ["hook_due"]
        # A final status is never left, so no second move can write a second row.
        with connection() as conn:
            assert transition(conn, job_id, Status.REVOKED, set(ACTIVE), "again") is None
            # Nobody listens there: keep later tests' workers from trying.
            conn.execute("UPDATE job_hooks SET state = 'failed' WHERE job_id = %s", (job_id,))


def test_an_actor_target_gets_one_message_with_the_final_job() -> None:
    from tests import hook_targets

    job_id = make_started_job(4, on_complete="tests.hook_targets:record_completion")
    _finish_in_process(job_id, 4)
    assert deliver(job_id) == "delivered"
    assert deliver(job_id) == "not_due"  # enqueued once
    broker = dramatiq.get_broker()
    worker = dramatiq.Worker(broker, queues={hook_targets.HOOK_QUEUE}, worker_threads=1)
    worker.start()
    try:
        _wait(lambda: len(hook_targets.RECEIVED) >= 1, 30, "the hook actor")
        time.sleep(0.3)
    finally:
        worker.stop()
    (payload,) = hook_targets.RECEIVED
    assert payload["job_id"] == job_id and payload["status"] == "success"
    assert payload["done"] == 4 and payload["idempotency_key"] == f"job-{job_id}"
    assert _hook_row(job_id)["state"] == "delivered"  # type: ignore[index]


def test_a_hook_target_that_fails_twice_then_succeeds_is_delivered_once(tmp_path: Path) -> None:
    with HookServer(fail_first=2) as server:
        env = {"JOBSYS_HOOK_BACKOFF_S": "0.2"}
        with LocalSystem(workers=1, processors=1, log_dir=tmp_path, env=env) as system:
            job = jobsys.submit("echo", counted_items(40), on_complete=server.url)
            final = wait_until_final(job.id, timeout=120, on_update=lambda v: None)
            assert final.status == "success"
            (accepted,) = server.wait_accepted(1)
            system.check_alive()
            # Nothing is due any more: a reconciler pass sends nothing.
            fast = get_settings().model_copy(update={"hook_resend_after_s": 0.0})
            assert job.id not in resend_due(fast).resent
            time.sleep(1.0)
        assert [r.answered for r in server.received] == [500, 500, 200]
    assert {r.headers["Idempotency-Key"] for r in server.received} == {f"job-{job.id}"}
    assert accepted.body == server.received[0].body
    assert accepted.body["status"] == "success" and accepted.body["done"] == 40
    assert _events(job.id) == ["hook_due", "hook_failed", "hook_failed", "hook_delivered"]
    row = _hook_row(job.id)
    assert row is not None and (row["state"], row["attempts"]) == ("delivered", 3)


@pytest.mark.parametrize(
    ("pause_at", "events"),
    [
        # Killed after the commit that made the job final (outbox row written)
        # and before teardown could enqueue the delivery: only the
        # reconciler's resend of the overdue row delivers it.
        ("after_final_commit", ["hook_due", "hook_delivered"]),
        # Killed after claiming the delivery and before sending it: the claim's
        # lease expires, the reconciler resends, the new sender re-claims.
        ("before_hook_send", ["hook_due", "hook_reclaimed", "hook_delivered"]),
    ],
)
def test_a_hook_whose_worker_is_killed_before_sending_is_still_delivered_once(
    tmp_path: Path, pause_at: str, events: list[str]
) -> None:
    marker = tmp_path / "paused"
    env = {"JOBSYS_PAUSE_AT": pause_at, "JOBSYS_PAUSE_FILE": str(marker),
           "JOBSYS_HOOK_LEASE_S": "1"}  # fmt: skip
    with (
        HookServer() as server,
        LocalSystem(workers=1, processors=1, log_dir=tmp_path, env=env) as system,
    ):
        job = jobsys.submit("echo", counted_items(20), on_complete=server.url)
        _wait(marker.exists, 120, f"the worker to pause at {pause_at}")
        paused = system.workers[0]
        assert int(marker.read_text()) == paused.pid
        assert jobsys.get_job(job.id).status == "success"
        assert server.received == []
        os.kill(paused.pid, signal.SIGKILL)
        paused.wait()
        system.workers.remove(paused)

        system.env = {k: v for k, v in system.env.items() if not k.startswith("JOBSYS_PAUSE")}
        system.start_worker()
        time.sleep(1.1)  # past the dead sender's 1 s lease
        fast = get_settings().model_copy(update={"hook_resend_after_s": 0.0})
        assert resend_due(fast).resent == [job.id]
        (got,) = server.wait_accepted(1)
        assert got.body["job_id"] == job.id and got.body["status"] == "success"
        if pause_at == "after_final_commit":
            # The killed worker's result batch comes back to the new worker: it
            # counts nothing (a late batch) and sends nothing more.
            _wait(lambda: _events(job.id, "late_results") != [], 60, "the redelivery")
        # The receiver answered; the sender's mark commits a moment later (on a
        # loaded machine, after the 1 s lease of this test: then it is due).
        _wait(lambda: (_hook_row(job.id) or {}).get("state") == "delivered", 30, "the mark")
        assert resend_due(fast).resent == []
        time.sleep(1.0)
        system.check_alive()
    assert len(server.received) == 1
    assert _events(job.id) == events
    assert _hook_row(job.id)["state"] == "delivered"  # type: ignore[index]
