"""jobsys through a real PgBouncer in transaction pooling mode.

The test starts its own pgbouncer (Debian package, installed when missing) on
a free port in front of the shared Postgres and points jobsys at it. Behind
transaction pooling a client's next transaction may run on another server
session, so session-level state does not survive: advisory locks held by a
session, prepared statements. jobsys's locks must still exclude, and
`jobsys doctor` must say what to set when something would break.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import jobsys
from devtools.pgbouncer import PgBouncer
from jobsys.api.read import wait_until_final
from jobsys.display import host_port
from jobsys.lifecycle.states import FINAL
from jobsys.ops import doctor
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import close_pool, connection
from jobsys.pg.locks import is_locked, job_lock
from jobsys.pg.migrate import migrate
from jobsys.pg.queries import Q
from jobsys.reconciler import reconcile_pass
from jobsys.settings import get_settings, reset_settings

TASKS = 3_000


@pytest.fixture(scope="module")
def bouncer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    host, port = host_port(get_settings().database_url, 5432)
    with PgBouncer(tmp_path_factory.mktemp("pgbouncer"), host or "127.0.0.1", port) as pgb:
        yield pgb


@pytest.fixture
def through_bouncer(bouncer: PgBouncer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process (and the processes it starts) talk to Postgres through pgbouncer."""
    dbname = psycopg.conninfo.conninfo_to_dict(get_settings().database_url)["dbname"]
    url = bouncer.url(str(dbname))
    monkeypatch.setenv("JOBSYS_DATABASE_URL", url)
    monkeypatch.setenv("JOBSYS_DB_PREPARED_STATEMENTS", "false")
    reset_settings()
    close_pool()
    yield url
    close_pool()
    monkeypatch.undo()
    reset_settings()


def test_doctor_sees_transaction_pooling_and_names_the_setting(bouncer: PgBouncer) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(get_settings().database_url)["dbname"]
    url = bouncer.url(str(dbname))
    direct = doctor.check_pooling(get_settings().database_url, prepared_statements=True)
    assert direct.ok, direct.message

    wrong = doctor.check_pooling(url, prepared_statements=True)
    assert not wrong.ok
    assert wrong.message.endswith("set JOBSYS_DB_PREPARED_STATEMENTS=false"), wrong.message
    assert "\n" not in wrong.message

    right = doctor.check_pooling(url, prepared_statements=False)
    assert right.ok and "transaction pooling detected" in right.message
    assert "JOBSYS_DB_LISTEN" not in right.message
    listening = doctor.check_pooling(url, prepared_statements=False, listen=True)
    assert listening.ok and listening.message.endswith("waiters poll)"), listening.message


def test_prepared_statements_off_survive_transaction_pooling(through_bouncer: str) -> None:
    """Two pooled connections running the same query in turn, past psycopg's
    prepare threshold: with prepared statements off nothing breaks."""
    errors: list[str] = []
    with connection() as first, connection() as second:
        for _ in range(20):
            for conn in (first, second):
                try:
                    conn.execute(Q.get_job, {"job_id": 0}).fetchall()
                except psycopg.Error as exc:
                    errors.append(str(exc))
    assert errors == []


def test_job_locks_exclude_each_other_through_transaction_pooling(through_bouncer: str) -> None:
    """A session-level advisory lock is not exclusive behind transaction pooling:
    the second client runs on the very server session that took it and
    "takes" it again. jobsys's lock must still let only one holder in."""
    with job_lock("reconcile", 424242) as first:
        assert first
        with job_lock("reconcile", 424242) as second:
            assert not second
        assert is_locked("reconcile", 424242)
        assert is_locked("bootstrap", 424242) is False
    assert not is_locked("reconcile", 424242)

    # A holder that raises releases it.
    with pytest.raises(RuntimeError), job_lock("reconcile", 424243) as held:
        assert held
        raise RuntimeError("boom")
    assert not is_locked("reconcile", 424243)


def test_a_job_and_the_reconciler_run_through_pgbouncer(
    through_bouncer: str, tmp_path: Path
) -> None:
    # Migrations through the pooler: two at once apply nothing twice.
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(migrate())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[], []]

    env = {"JOBSYS_DATABASE_URL": through_bouncer, "JOBSYS_DB_PREPARED_STATEMENTS": "false"}
    with LocalSystem(workers=1, processors=1, concurrency=8, log_dir=tmp_path, env=env):
        items = (json.dumps({"n": i}) for i in range(TASKS))
        job = jobsys.submit("echo", items, name="pgbouncer")
        passes = []
        deadline = time.monotonic() + 120
        while jobsys.get_job(job.id).status not in FINAL and time.monotonic() < deadline:
            passes.append(reconcile_pass(trigger="test"))  # races the job through the pooler
            time.sleep(0.2)
        final = wait_until_final(job.id, timeout=120)
    assert final.status == "success"
    assert (final.done, final.failed, final.lost) == (TASKS, 0, 0)
    with connection() as conn:
        ledger = conn.execute(Q.ledger_counts, {"job_id": job.id}).fetchone()
    assert ledger is not None and ledger["done"] == TASKS and ledger["pending"] == 0
    assert passes, "the reconciler ran during the job"
    kinds = {f.kind for p in passes for f in p.findings if f.job_id == job.id}
    assert kinds <= {"waiting"}, kinds
    # The reconciler's records went through the pooler too.
    last = reconcile_pass(trigger="test")
    assert all(f.job_id != job.id for f in last.findings)
