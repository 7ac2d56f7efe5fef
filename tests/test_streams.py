"""A job's stream, (re)created by whoever needs it, holds every pending task and
no finished one; against real Postgres, Redis and NATS (no worker runs here).

The faults are real: a stream deleted on the server (NATS lost its data), a
bootstrap run again afterwards (as a Dramatiq redelivery or the reconciler's
re-enqueue would), a bootstrap resumed after the duplicate window, and a
NATS server whose `max_payload` is smaller than an item submitted earlier.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jobsys
import jobsys.bootstrap.fill
import jobsys.nats.admin
from jobsys.bootstrap.start import run_bootstrap
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.lifecycle.teardown import run_teardown
from jobsys.nats.bridge import bridge, close_bridge
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.reconciler import inspect_job, reconcile_pass
from jobsys.settings import get_settings, reset_settings
from jobsys.worker.actors import process_results
from tests.helpers import (
    assert_counters_match_ledger,
    counters,
    fast,
    ledger,
    make_started_job,
    messages_in_stream,
    pull_results,
    stream_exists,
)

SMALL_MAX_PAYLOAD = 64 * 1024
RACE_ITERATIONS = 10


def tasks_in_stream(job_id: int) -> list[int]:
    """The task number of every task message the job's stream holds, in stream order."""
    return [task for task, _ in messages_in_stream(job_id)]


def delete_stream(job_id: int) -> None:
    """NATS lost the job's stream (and with it every message and the consumer)."""
    names = JobNames.of(get_settings().namespace, job_id)
    assert bridge().run(lambda nc, js: js.delete_stream(names.stream))


def task_row(job_id: int, task_no: int) -> dict[str, Any]:
    with connection() as conn:
        row = conn.execute(
            "SELECT status, error FROM job_tasks WHERE job_id = %s AND task_no = %s",
            (job_id, task_no),
        ).fetchone()
    assert row is not None
    return dict(row)


# -- hole 2: a lost stream, then any bootstrap re-run -------------------------------


def test_a_lost_stream_then_a_bootstrap_re_run_republishes_every_pending_task_and_loses_none() -> (
    None
):
    job_id = make_started_job(50)
    first = pull_results(job_id, 10)
    process_results.fn(job_id, first)  # counted, acked
    finished = {i["task"] for i in first}
    delete_stream(job_id)

    assert run_bootstrap(job_id) == "published"
    time.sleep(0.3)  # idle past lost_after_s
    found = [f for f in reconcile_pass(fast()).findings if f.job_id == job_id]

    assert ledger(job_id)["lost"] == 0, found
    assert [(f.kind, f.action) for f in found] == [("waiting", "none")]
    assert sorted(tasks_in_stream(job_id)) == sorted(set(range(50)) - finished)
    rest = pull_results(job_id, 50)
    assert sorted(i["task"] for i in rest) == sorted(set(range(50)) - finished)
    process_results.fn(job_id, rest)
    view = jobsys.get_job(job_id)
    assert (view.status, view.done, view.lost) == ("success", 50, 0)
    assert_counters_match_ledger(job_id)
    run_teardown(job_id)  # what the worker would do with the enqueued teardown


def test_a_bootstrap_resumed_after_the_duplicate_window_publishes_no_finished_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A short duplicate window on a real stream, so "after the window" is a second away.
    monkeypatch.setattr(jobsys.nats.admin, "DUPLICATE_WINDOW_S", 0.5)
    job_id = make_started_job(20)
    process_results.fn(job_id, [i for i in pull_results(job_id, 20) if i["task"] < 10])
    # As a bootstrap killed after publishing tasks 5.. but before recording that leaves it.
    with connection() as conn:
        conn.execute("UPDATE jobs SET published_count = 5 WHERE id = %s", (job_id,))
    time.sleep(1.0)  # past the duplicate window

    assert run_bootstrap(job_id) == "published"

    in_stream = tasks_in_stream(job_id)
    assert set(in_stream) == set(range(10, 20)), f"finished tasks republished: {in_stream}"
    assert jobsys.get_job(job_id).published == 20
    jobsys.cancel(job_id)


def test_the_reconciler_repairs_a_stream_re_created_empty_behind_its_back() -> None:
    # Someone (an older bootstrap, an operator) re-created the stream empty:
    # the stream is there, but it is not the one the tasks were published to.
    job_id = make_started_job(6)
    delete_stream(job_id)
    names = JobNames.of(get_settings().namespace, job_id)
    job = {"pipeline": "echo", "max_deliver": 5}
    bridge().run(
        lambda nc, js: jobsys.nats.admin.ensure_job_stream(nc, js, names, job, get_settings())
    )
    time.sleep(0.3)

    found = [f for f in reconcile_pass(fast()).findings if f.job_id == job_id]

    assert [(f.kind, f.action) for f in found] == [("stream_replaced", "recreated")]
    assert found[0].detail["republished"] == 6
    assert sorted(tasks_in_stream(job_id)) == list(range(6))
    assert ledger(job_id)["lost"] == 0
    jobsys.cancel(job_id)


def test_a_lost_consumer_is_re_created_and_nothing_is_published_twice() -> None:
    job_id = make_started_job(5)
    names = JobNames.of(get_settings().namespace, job_id)
    assert bridge().run(lambda nc, js: js.delete_consumer(names.stream, names.consumer))

    found = [f for f in reconcile_pass(fast(lost_after_s=3600)).findings if f.job_id == job_id]

    assert [(f.kind, f.action) for f in found] == [("consumer_missing", "recreated_consumer")]
    assert (found[0].detail["republished"], found[0].detail["published"]) == (0, 0)
    assert sorted(tasks_in_stream(job_id)) == list(range(5))
    assert sorted(i["task"] for i in pull_results(job_id, 5)) == list(range(5))
    jobsys.cancel(job_id)


def test_a_job_bootstrapped_before_incarnations_were_recorded_gets_its_lost_stream_back() -> None:
    job_id = make_started_job(8)
    process_results.fn(job_id, [i for i in pull_results(job_id, 8) if i["task"] < 3])
    with connection() as conn:  # as migration 005 leaves a job bootstrapped before it
        conn.execute("UPDATE jobs SET stream_created = NULL WHERE id = %s", (job_id,))
    delete_stream(job_id)

    found = [f for f in reconcile_pass(fast()).findings if f.job_id == job_id]

    assert [(f.kind, f.action) for f in found] == [("stream_missing", "recreated")]
    assert found[0].detail["republished"] == 5
    assert sorted(tasks_in_stream(job_id)) == [3, 4, 5, 6, 7]
    assert jobsys.get_job(job_id).status == "started"
    with connection() as conn:
        row = conn.execute("SELECT stream_created FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None and row["stream_created"] is not None
    jobsys.cancel(job_id)


def test_a_cancel_landing_while_a_lost_stream_is_refilled_wins_and_leaves_no_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small chunks: more points between chunks where the status is re-checked.
    monkeypatch.setattr(jobsys.bootstrap.fill, "PUBLISH_CHUNK", 200)
    outcomes: dict[str, int] = {}
    for i in range(RACE_ITERATIONS):
        job_id = make_started_job(2_000)
        delete_stream(job_id)
        barrier = threading.Barrier(2)
        boot: list[str] = []

        def bootstrap(
            job_id: int = job_id, barrier: threading.Barrier = barrier, boot: list[str] = boot
        ) -> None:
            barrier.wait()
            boot.append(run_bootstrap(job_id))

        racer = threading.Thread(target=bootstrap)
        racer.start()
        barrier.wait()
        time.sleep(0.03 * i)  # spread the cancel over the refill (and after it)
        result = jobsys.cancel(job_id)
        racer.join(120)
        assert (result.status, result.changed) == ("revoked", True)
        assert boot[0] in {"inactive", "stopped", "published"}
        assert not stream_exists(job_id), f"stream left behind (bootstrap {boot[0]})"
        view = jobsys.get_job(job_id)
        assert (view.status, view.cancelled, view.lost) == ("revoked", 2_000, 0)
        assert_counters_match_ledger(job_id)
        outcomes[boot[0]] = outcomes.get(boot[0], 0) + 1
    print(f"refill vs cancel over {RACE_ITERATIONS} runs: {outcomes}")


# -- hole 4: an item larger than the server's max_payload ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the private nats-server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4096).startswith(b"INFO"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the private nats-server did not come up")


@pytest.fixture
def small_payload_nats(tmp_path: Path) -> Iterator[str]:
    """A private nats-server (free port) whose max_payload is 64 KiB."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = _free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"max_payload: {SMALL_MAX_PAYLOAD}\n")
    store = tmp_path / "js"
    cmd = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store), "-c", str(conf)]
    with (tmp_path / "nats.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        _wait_for_port(port, proc)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def _use_nats(url: str | None) -> str | None:
    """Point this process at another NATS server; returns the previous URL."""
    before = os.environ.get("JOBSYS_NATS_URL")
    if url is None:
        os.environ.pop("JOBSYS_NATS_URL", None)
    else:
        os.environ["JOBSYS_NATS_URL"] = url
    close_bridge()
    reset_settings()
    return before


def test_an_item_over_the_servers_max_payload_fails_its_task_and_bootstrap_goes_on(
    small_payload_nats: str,
) -> None:
    big = json.dumps({"blob": "x" * 100_000})
    # Submitted while the server took 1 MB messages; the limit shrank since.
    items = [json.dumps({"n": 0}), big, json.dumps({"n": 2})]
    job_id = jobsys.submit("echo", items, failure_threshold=0.5).id
    alone = jobsys.submit("echo", [big]).id
    shared = _use_nats(small_payload_nats)
    try:
        assert run_bootstrap(job_id) == "published"
        failed = task_row(job_id, 1)
        assert failed["status"] == "failed"
        assert "65,536" in failed["error"] and "max_payload" in failed["error"]
        assert (counters(job_id)["failed"], ledger(job_id)["pending"]) == (1, 2)
        assert_counters_match_ledger(job_id)
        rest = pull_results(job_id, 3)
        assert sorted(i["task"] for i in rest) == [0, 2]
        process_results.fn(job_id, rest)
        view = jobsys.get_job(job_id)
        assert (view.status, view.done, view.failed) == ("success", 2, 1)
        assert_counters_match_ledger(job_id)

        # A job whose only task is too large ends there and then, and says why.
        assert run_bootstrap(alone) in {"published", "stopped"}
        view = jobsys.get_job(alone)
        assert (view.status, view.failed) == ("failure", 1)
        assert_counters_match_ledger(alone)
        for job in (job_id, alone):
            run_teardown(job)
            assert not stream_exists(job)
    finally:
        _use_nats(shared)


# -- the chaos fault, end to end: a running job's stream lost, its bootstrap re-sent --


def test_a_running_job_whose_stream_is_lost_and_bootstrap_re_sent_finishes_with_nothing_lost(
    tmp_path: Path,
) -> None:
    # A real worker (runs the re-sent bootstrap) and processor; the reconciler
    # runs with a short lost-after meanwhile, as a scheduler would.
    items = (json.dumps({"i": i, "sleep_ms": 20}) for i in range(300))
    settings = fast(lost_after_s=1.0)
    with LocalSystem(workers=1, processors=1, concurrency=8, log_dir=tmp_path / "logs"):
        job_id = jobsys.submit("echo", items).id
        deadline = time.monotonic() + 60
        while counters(job_id)["done"] < 20:
            assert time.monotonic() < deadline, "the job never started running"
            time.sleep(0.05)
        delete_stream(job_id)  # NATS lost the stream with the job half done
        send_bootstrap(job_id)  # its bootstrap delivered again (Dramatiq redelivery)
        deadline = time.monotonic() + 60
        while not stream_exists(job_id):  # the worker's bootstrap re-created it
            assert time.monotonic() < deadline, "the re-sent bootstrap never ran"
            time.sleep(0.02)
        deadline = time.monotonic() + 120
        while jobsys.get_job(job_id).status in {"queued", "started"}:
            assert time.monotonic() < deadline, inspect_job(job_id)
            reconcile_pass(settings)
            time.sleep(0.5)
    view = jobsys.get_job(job_id)
    assert (view.status, view.done, view.failed, view.lost) == ("success", 300, 0, 0)
    assert_counters_match_ledger(job_id)
