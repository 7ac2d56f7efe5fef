"""Results that cannot be recorded yet are held, not re-run until NATS gives up on them.

JetStream counts every delivery against max_deliver, whatever caused it. If a
processor let its messages' ack_wait expire while their results wait for a
worker (workers down, Postgres down, a backlog), each wait would cost every
such task a delivery and a re-run, and a long enough wait would exhaust
them: tasks whose pipeline succeeded would end `lost`. These tests stop the
part that records results for several times ack_wait x max_deliver and
check that every task still ends `done` on its first delivery.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from jobsys.api.read import wait_until_final
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.settings import get_settings
from tests.chaos import PrivateServers
from tests.helpers import assert_counters_match_ledger, make_started_job


def _deliveries(job_id: int) -> dict[int, int]:
    from jobsys.pg.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT deliveries, count(*) AS n FROM job_tasks WHERE job_id = %s GROUP BY 1",
            (job_id,),
        ).fetchall()
    return {r["deliveries"]: r["n"] for r in rows}


def _redelivered(job_id: int) -> int:
    names = JobNames.of(get_settings().namespace, job_id)

    async def info(nc: Any, js: Any) -> int:
        return int((await js.consumer_info(names.stream, names.consumer)).num_redelivered or 0)

    return bridge().run(info)


def _assert_all_done_on_first_delivery(job_id: int, total: int) -> None:
    view = wait_until_final(job_id, timeout=120)
    assert view.status == "success" and view.done == total and view.lost == 0
    assert _deliveries(job_id) == {1: total}
    assert_counters_match_ledger(job_id)


def test_results_wait_for_a_worker_without_being_redelivered(tmp_path: Path) -> None:
    ack_wait, max_deliver = get_settings().ack_wait_s, 2
    job_id = make_started_job(300, max_deliver=max_deliver)
    with LocalSystem(workers=0, processors=1, log_dir=tmp_path) as system:
        # No worker: every result batch waits in Redis. Without holding, each
        # task would be delivered max_deliver times within this sleep.
        time.sleep(ack_wait * max_deliver * 2.5)
        assert _redelivered(job_id) == 0
        system.start_worker()
        _assert_all_done_on_first_delivery(job_id, 300)


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    (tmp_path / "servers").mkdir()
    servers = PrivateServers(tmp_path / "servers")
    servers.start_redis()
    yield servers
    servers.stop_all()


def test_results_are_held_while_redis_is_down_and_sent_when_it_returns(
    tmp_path: Path, private_redis: PrivateServers
) -> None:
    ack_wait, max_deliver = get_settings().ack_wait_s, 2
    redis_url = private_redis.env["JOBSYS_REDIS_URL"]
    job_id = make_started_job(300, max_deliver=max_deliver)
    env = {"JOBSYS_REDIS_URL": redis_url}
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path, env=env):
        private_redis.stop_redis()
        # Redis down: the processor cannot send a single result.
        time.sleep(ack_wait * max_deliver * 2.5)
        assert _redelivered(job_id) == 0
        private_redis.start_redis()
        _assert_all_done_on_first_delivery(job_id, 300)


def test_a_processor_killed_while_holding_results_loses_nothing(tmp_path: Path) -> None:
    job_id = make_started_job(200, max_deliver=3)
    with LocalSystem(workers=0, processors=1, log_dir=tmp_path) as system:
        time.sleep(get_settings().ack_wait_s * 1.5)
        # Its held messages go back to NATS after ack_wait; another processor
        # runs them again and, with a worker now, they are recorded.
        victim = system.processors[0]
        victim.kill()
        victim.wait()
        system.start_processor()
        system.start_worker()
        view = wait_until_final(job_id, timeout=120)
    assert view.status == "success" and view.done == 200 and view.lost == 0
    assert_counters_match_ledger(job_id)


def test_a_task_running_longer_than_ack_wait_is_kept_in_progress_and_run_once(
    tmp_path: Path,
) -> None:
    import json

    import jobsys
    from jobsys.bootstrap.start import run_bootstrap

    ack_wait = get_settings().ack_wait_s
    items = (json.dumps({"n": i, "sleep_ms": int(ack_wait * 2500)}) for i in range(4))
    job_id = jobsys.submit("echo", items, max_deliver=3).id
    assert run_bootstrap(job_id) == "published"
    with LocalSystem(workers=1, processors=1, concurrency=4, log_dir=tmp_path):
        time.sleep(ack_wait * 2)
        assert _redelivered(job_id) == 0
        _assert_all_done_on_first_delivery(job_id, 4)
