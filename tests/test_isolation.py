"""Crashes, hangs and bad batch items cost only their own task (real processes, real signals).

The pipelines kill the process running them for real (SIGKILL, os._exit, a
segfault through ctypes) or never return. With isolated execution (the
default) the processor itself survives: the task that crashed is retried
through NATS and, on its last delivery, ends `failed` with a reason that
names the death; every innocent task is re-run locally at no delivery cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from nats.js.errors import NotFoundError

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.cli.main import main as cli_main
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.settings import get_settings
from tests.helpers import assert_counters_match_ledger
from tests.pipelines import SETUP_LOG_ENV


def _tasks(job_id: int) -> dict[int, dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, status, error, deliveries, result FROM job_tasks WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return {r["task_no"]: r for r in rows}


@pytest.fixture
def system(tmp_path: Path) -> Iterator[LocalSystem]:
    with LocalSystem(workers=1, processors=1, concurrency=4, log_dir=tmp_path) as sys_:
        yield sys_


POISON = {40: "kill", 90: "exit", 160: "segfault"}
DEATHS = {
    "kill": "killed by signal 9 (SIGKILL)",
    "exit": "exited with code 3",
    "segfault": "killed by signal 11 (SIGSEGV)",
}


def test_poison_tasks_cost_only_themselves_and_end_failed_naming_the_death(
    system: LocalSystem,
) -> None:
    items = (json.dumps({"n": i, "crash": POISON.get(i, False)}) for i in range(200))
    job = jobsys.submit("fault-echo", items, max_deliver=3, failure_threshold=0.1)
    final = wait_until_final(job.id, timeout=120)
    system.check_alive()  # the processor itself never died
    assert (final.status, final.done, final.failed, final.lost) == ("success", 197, 3, 0)
    tasks = _tasks(job.id)
    for task_no, kind in POISON.items():
        row = tasks[task_no]
        assert row["status"] == "failed"
        assert row["error"].startswith("gave up after 3 deliveries: execution process")
        assert DEATHS[kind] in row["error"]
    # The innocents were never charged a delivery for a crash they shared.
    innocents = [r for n, r in tasks.items() if n not in POISON]
    assert {(r["status"], r["deliveries"]) for r in innocents} == {("done", 1)}
    assert_counters_match_ledger(job.id)


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_a_hung_task_is_stopped_at_its_time_limit_and_ends_failed(
    tmp_path: Path, pool: str
) -> None:
    ack_wait, max_deliver, timeout = get_settings().ack_wait_s, 2, 1.0
    items = (json.dumps({"n": i, "hang": i == 3}) for i in range(20))
    job = jobsys.submit("fault-echo", items, max_deliver=max_deliver, task_timeout_s=timeout)
    with LocalSystem(workers=1, processors=1, concurrency=2, log_dir=tmp_path, pool=pool) as s:
        # A bound, not a measurement: every task ends within about
        # max_deliver x (timeout + ack_wait), plus the nak delay and slack.
        final = wait_until_final(job.id, timeout=max_deliver * (timeout + ack_wait) + 20)
        s.check_alive()
    assert (final.done, final.failed, final.lost) == (19, 1, 0)
    row = _tasks(job.id)[3]
    assert row["error"] == f"gave up after {max_deliver} deliveries: timed out after 1 s"


def test_a_batch_is_split_until_its_bad_items_are_found(system: LocalSystem) -> None:
    bad = {5: {"crash": "kill"}, 17: {"fail": True}, 30: {"transient": True}}
    items = (json.dumps({"n": i, **bad.get(i, {})}) for i in range(64))
    job = jobsys.submit("fault-echo-batch", items, max_deliver=2, failure_threshold=0.1)
    final = wait_until_final(job.id, timeout=120)
    system.check_alive()
    assert (final.done, final.failed, final.lost) == (61, 3, 0)
    tasks = _tasks(job.id)
    assert tasks[5]["error"] == (
        "gave up after 2 deliveries: execution process killed by signal 9 (SIGKILL)"
    )
    assert tasks[17]["error"] == "payload asked to fail"
    assert tasks[30]["error"].startswith("gave up after 2 deliveries: TransientError")
    innocents = [r for n, r in tasks.items() if n not in bad]
    assert {(r["status"], r["deliveries"]) for r in innocents} == {("done", 1)}


def test_setup_runs_once_per_execution_process_and_a_raising_batch_is_split(
    tmp_path: Path,
) -> None:
    setup_log = tmp_path / "setup.log"
    items = (json.dumps({"n": i, "poison": i == 11}) for i in range(100))
    job = jobsys.submit("tests.pipelines:scale", items, max_deliver=2, failure_threshold=0.1)
    env = {SETUP_LOG_ENV: str(setup_log)}
    with LocalSystem(workers=1, processors=1, concurrency=3, log_dir=tmp_path, env=env):
        final = wait_until_final(job.id, timeout=120)
    assert (final.done, final.failed, final.lost) == (99, 1, 0)
    tasks = _tasks(job.id)
    assert tasks[11]["error"] == (
        "gave up after 2 deliveries: RuntimeError: a poisoned item broke the batch"
    )
    assert all(tasks[n]["result"]["scaled"] == n * 10 for n in tasks if n != 11)
    pids = setup_log.read_text().split()
    # Once per execution process; every result came from a process that set up.
    assert len(pids) == len(set(pids)) <= 3
    assert {str(tasks[n]["result"]["pid"]) for n in tasks if n != 11} <= set(pids)


def test_max_in_flight_is_the_consumer_limit_and_is_never_exceeded(system: LocalSystem) -> None:
    runner = CliRunner()
    out = runner.invoke(
        cli_main,
        ["submit", "echo", "--count", "0", "--task-timeout", "7.5", "--max-in-flight", "3",
         "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    with connection() as conn:
        row = conn.execute(
            "SELECT task_timeout_s, max_in_flight FROM jobs WHERE id = %s",
            (json.loads(out.output)["job_id"],),
        ).fetchone()
    assert row is not None and (row["task_timeout_s"], row["max_in_flight"]) == (7.5, 3)

    items = (json.dumps({"n": i, "sleep_ms": 100}) for i in range(40))
    job = jobsys.submit("echo", items, max_in_flight=3)
    names = JobNames.of(get_settings().namespace, job.id)

    async def info(nc: Any, js: Any) -> Any:
        return await js.consumer_info(names.stream, names.consumer)

    seen: list[int] = []
    config_limit = None
    deadline = time.monotonic() + 60
    while jobsys.get_job(job.id).status in {"queued", "started"}:
        assert time.monotonic() < deadline
        try:
            consumer = bridge().run(info)
        except NotFoundError:
            continue  # not bootstrapped yet, or just finished
        config_limit = consumer.config.max_ack_pending
        seen.append(consumer.num_ack_pending)
        time.sleep(0.05)
    assert config_limit == 3
    assert max(seen) <= 3 and max(seen) > 0
    assert wait_until_final(job.id, timeout=60).status == "success"


def test_the_cli_refuses_a_bad_task_timeout() -> None:
    out = CliRunner().invoke(cli_main, ["submit", "echo", "--count", "1", "--task-timeout", "0"])
    assert out.exit_code != 0
