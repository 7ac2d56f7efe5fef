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
# test's database). Submit: the job row, COPY of its tasks, the task count
# with the job_submitted event. Bootstrap: the bootstrap lock, the job's
# stream state, queued -> started, the stream incarnation, the pending
# tasks, their places, the resume point.
SUBMIT_STATEMENTS, SUBMIT_TRANSACTIONS = 3, 1
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
