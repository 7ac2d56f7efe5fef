"""A job's fixed cost: no new connection per job or per submit (issue 20).

Regression: every bootstrap's job lock opened a Postgres connection of its
own, and every submit opened a NATS connection just to read the server's
max_payload.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest

import jobsys
from jobsys.api import items
from jobsys.api.submit import ONE_STATEMENT_BYTES, ONE_STATEMENT_ITEMS
from jobsys.bootstrap.start import run_bootstrap
from jobsys.pg.db import connection
from jobsys.pg.locks import Lock, job_lock
from jobsys.worker.actors import process_results
from tests.helpers import pull_results

LOCKS = 20

HOLDER = """
SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND a.datname = current_database()
"""


def test_job_locks_in_a_row_are_held_on_reused_connections() -> None:
    holders: set[int] = set()
    for job_id in range(-LOCKS, 0):
        with job_lock(Lock.BOOTSTRAP, job_id) as held:
            assert held
            with connection() as conn:
                holders |= {row["pid"] for row in conn.execute(HOLDER).fetchall()}
    # A pool may open a second connection while warming; not one per lock.
    assert 1 <= len(holders) <= 2, f"{len(holders)} server sessions held {LOCKS} locks"


def test_submits_in_a_row_open_one_nats_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = items.open_nats

    def counting(url: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(url)
        return real(url, *args, **kwargs)  # the real server is connected to

    monkeypatch.setattr(items, "open_nats", counting)
    monkeypatch.setattr(items, "_max_payloads", {}, raising=False)
    for i in range(5):
        jobsys.submit("echo", [{"i": i}], name=f"cost{i}")
    assert len(opened) == 1, f"{len(opened)} NATS connections for 5 submits"


# What a small job's submit and bootstrap say to Postgres (statements and
# transactions as the code issues them; the statements are real, run on the
# test's database). Submit: one statement (the job row, its tasks and its
# job_submitted event); a list of more items: the job row, COPY of its
# tasks, the task count with the event, in a transaction. Bootstrap: the bootstrap lock, the job's
# stream state, queued -> started, the stream incarnation, the pending
# tasks, their places, the resume point.
SUBMIT_STATEMENTS, SUBMIT_TRANSACTIONS = 1, 0
COPY_SUBMIT_STATEMENTS, COPY_SUBMIT_TRANSACTIONS = 3, 1
BOOTSTRAP_STATEMENTS, BOOTSTRAP_TRANSACTIONS = 7, 1
# The batch that finishes it: the job row, the batch counted, the move to its
# final status (with its waiters' notice), then the stream_deleted event.
FINISH_STATEMENTS, FINISH_TRANSACTIONS = 4, 1


def _count_statements(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    counts: Counter[str] = Counter()

    def counted(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(psycopg.Cursor, "execute", counted("statements", psycopg.Cursor.execute))
    monkeypatch.setattr(psycopg.Cursor, "copy", counted("statements", psycopg.Cursor.copy))
    monkeypatch.setattr(
        psycopg.Connection, "transaction", counted("transactions", psycopg.Connection.transaction)
    )
    return counts


def test_a_small_jobs_submit_and_bootstrap_take_few_statements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobsys.submit("echo", [{"i": 0}])  # warm: the server's max_payload is known
    counts = _count_statements(monkeypatch)
    job = jobsys.submit("echo", [{"i": i} for i in range(20)])
    assert (counts["statements"], counts["transactions"]) == (
        SUBMIT_STATEMENTS, SUBMIT_TRANSACTIONS
    ), counts  # fmt: skip
    counts.clear()
    big = jobsys.submit("echo", [{"i": i} for i in range(ONE_STATEMENT_ITEMS + 1)])
    assert (counts["statements"], counts["transactions"]) == (
        COPY_SUBMIT_STATEMENTS, COPY_SUBMIT_TRANSACTIONS
    ), counts  # fmt: skip
    jobsys.cancel(big.id)
    counts.clear()
    wide = jobsys.submit("echo", [{"s": "x" * (ONE_STATEMENT_BYTES // 2)} for _ in range(2)])
    assert (counts["statements"], counts["transactions"]) == (
        COPY_SUBMIT_STATEMENTS, COPY_SUBMIT_TRANSACTIONS
    ), counts  # fmt: skip
    assert jobsys.get_job(wide.id).total == 2
    jobsys.cancel(wide.id)
    counts.clear()
    assert run_bootstrap(job.id) == "published"
    assert (counts["statements"], counts["transactions"]) == (
        BOOTSTRAP_STATEMENTS, BOOTSTRAP_TRANSACTIONS
    ), counts  # fmt: skip
    items = pull_results(job.id, 20)
    counts.clear()
    process_results.fn(job.id, items)
    assert (counts["statements"], counts["transactions"]) == (
        FINISH_STATEMENTS, FINISH_TRANSACTIONS
    ), counts  # fmt: skip
    monkeypatch.undo()
    assert jobsys.get_job(job.id).status == "success"


def _written(job_id: int) -> dict[str, Any]:
    with connection() as conn:
        job = conn.execute(
            "SELECT name, pipeline, total_count, failure_threshold, max_deliver, task_timeout_s,"
            " max_in_flight, retry_delay_s, retry_delay_max_s, rate_per_s, priority, weight,"
            " hook_target, on_complete, status FROM jobs WHERE id = %(id)s",
            {"id": job_id},
        ).fetchone()
        tasks = conn.execute(
            "SELECT task_no, payload::text AS payload, status FROM job_tasks"
            " WHERE job_id = %(id)s ORDER BY task_no",
            {"id": job_id},
        ).fetchall()
        events = conn.execute(
            "SELECT event, detail FROM job_events WHERE job_id = %(id)s ORDER BY id",
            {"id": job_id},
        ).fetchall()
    return {"job": job, "tasks": tasks, "events": events}


@pytest.mark.parametrize("count", [0, 1, 7])
def test_a_small_list_is_written_in_one_statement_as_copy_would_write_it(count: int) -> None:
    items: list[Any] = [
        {"i": i, "text": 'é ✓ \\u0000 "q"', "nested": {"a": [1, 2.5, None, True]}}
        for i in range(count)
    ] + ['{"raw": "json text"}']
    options: dict[str, Any] = {
        "name": "same", "failure_threshold": 0.25, "max_deliver": 3, "task_timeout_s": 9.5,
        "max_in_flight": 4, "retry_delay": (0.5, 8), "rate": "20/s", "priority": 2,
        "weight": 3, "on_complete": "http://user:secret@hooks.example/x",
    }  # fmt: skip
    one = jobsys.submit("echo", items, **options)  # a list: one statement
    copied = jobsys.submit("echo", iter(items), **options)  # a generator: COPY
    assert _written(one.id) == _written(copied.id)
    assert len(_written(one.id)["tasks"]) == count + 1
    for job in (one, copied):
        jobsys.cancel(job.id)


def test_an_empty_list_is_a_job_of_no_tasks_that_ends_at_once() -> None:
    job = jobsys.submit("echo", [])
    assert (jobsys.get_job(job.id).total, jobsys.get_job(job.id).status) == (0, "queued")
    assert run_bootstrap(job.id) == "empty"
    assert jobsys.get_job(job.id).status == "success"
