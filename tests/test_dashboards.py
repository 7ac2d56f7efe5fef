"""The dashboard views and psql scripts against jobs whose numbers are known.

Job A goes through the real result path (bootstrap, real NATS messages,
apply_results): 20 tasks, 7 done, 3 failed "disk full", 2 failed "timeout",
8 pending. Job B is started and idle for 10 minutes, with two reconciler
findings. No worker runs: nothing else moves these jobs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import jobsys
from jobsys.api.items import counted_items
from jobsys.models import ResultBatch
from jobsys.nats.bridge import lookup_tasks
from jobsys.pg.db import connection
from jobsys.recording.apply import apply_results
from jobsys.settings import get_settings
from tests.helpers import assert_counters_match_ledger, make_started_job, pull_results

DASHBOARDS = Path(__file__).resolve().parent.parent / "sql" / "dashboards"
PSQL = "/usr/bin/psql"
VIEWS = [
    "job_overview",
    "active_jobs",
    "stuck_jobs",
    "job_throughput",
    "task_failures",
    "reconcile_findings_recent",
    "reconcile_runs_recent",
]
ERRORS = {0: "disk full", 1: "disk full", 2: "disk full", 3: "timeout", 4: "timeout"}


@dataclass
class Known:
    a: int
    b: int
    empty: int
    tag: str


@pytest.fixture(scope="module")
def known() -> Known:
    tag = uuid.uuid4().hex[:6]
    a = make_started_job(20, name=f"dash-a-{tag}", failure_threshold=0.5)
    items = pull_results(a, 12)
    assert len(items) == 12
    for n, item in enumerate(items):
        if n in ERRORS:
            item.update(status="failed", result=None, error=ERRORS[n])
    applied = apply_results(
        ResultBatch.model_validate({"job_id": a, "results": items}), lookup_tasks
    )
    assert (applied.moved_done, applied.moved_failed) == (7, 5)
    assert_counters_match_ledger(a)

    b = make_started_job(4, name=f"dash-b-{tag}")
    empty = jobsys.submit("echo", counted_items(0), name=f"dash-empty-{tag}").id
    with connection() as conn, conn.transaction():
        # Job A started an hour ago, so its rate window is the full 4-5 minutes.
        conn.execute("UPDATE jobs SET started_at = now() - interval '1 hour' WHERE id = %s", (a,))
        conn.execute(
            "UPDATE jobs SET progress_at = now() - interval '10 minutes' WHERE id = %s", (b,)
        )
        run = conn.execute(
            "INSERT INTO reconcile_runs (trigger, jobs_checked, findings, finished_at)"
            " VALUES ('cli', 2, 2, now()) RETURNING id"
        ).fetchone()
        assert run is not None
        for kind, action in (("counters_drift", "none"), (f"idle_lost_{tag}", "marked_lost")):
            conn.execute(
                "INSERT INTO reconcile_findings (run_id, job_id, kind, action, detail)"
                " VALUES (%s, %s, %s, %s, '{\"pending\": 4}')",
                (run["id"], b, kind, action),
            )
    return Known(a, b, empty, tag)


def rows(sql: str, *params: Any) -> list[dict[str, Any]]:
    with connection() as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def test_job_overview_shows_the_counters_percent_rate_and_eta_of_a_known_job(
    known: Known,
) -> None:
    (row,) = rows("SELECT * FROM job_overview WHERE id = %s", known.a)
    assert (row["status"], row["total"], row["done"], row["failed"], row["lost"]) == (
        "started", 20, 7, 5, 0,
    )  # fmt: skip
    assert (row["pending"], float(row["percent"])) == (8, 60.0)
    assert row["finished_5m"] == 12
    # 12 tasks over a 4-5 minute window.
    assert 12 / 5 - 0.05 <= float(row["tasks_per_min"]) <= 12 / 4 + 0.05
    # 8 pending at that rate: 8 * (4..5 min) / 12.
    assert timedelta(seconds=160) <= row["eta"] <= timedelta(seconds=200)
    assert row["age"] >= timedelta(0) and row["idle"] >= timedelta(0)

    (empty,) = rows("SELECT * FROM job_overview WHERE id = %s", known.empty)
    assert (empty["total"], empty["pending"], float(empty["percent"])) == (0, 0, 100.0)
    assert (empty["finished_5m"], empty["eta"]) == (0, None)


def test_active_jobs_lists_active_ones_most_recent_progress_first(known: Known) -> None:
    ids = [r["id"] for r in rows("SELECT id FROM active_jobs")]
    assert known.a in ids and known.b in ids
    assert ids.index(known.a) < ids.index(known.b)
    finished = rows("SELECT id FROM job_overview WHERE status NOT IN "
                    "('queued', 'started', 'canceling')")  # fmt: skip
    assert not {r["id"] for r in finished} & set(ids)


def test_stuck_jobs_shows_idle_jobs_with_the_reconcilers_latest_finding(known: Known) -> None:
    stuck = {r["id"]: r for r in rows("SELECT * FROM stuck_jobs")}
    assert known.a not in stuck
    b = stuck[known.b]
    assert (b["finding"], b["finding_action"]) == (f"idle_lost_{known.tag}", "marked_lost")
    assert b["finding_detail"] == {"pending": 4}
    assert b["idle"] >= timedelta(minutes=10)
    # The threshold is a session setting.
    with connection() as conn, conn.transaction():
        conn.execute("SET LOCAL jobsys.stuck_after = '20 minutes'")
        later = [r["id"] for r in conn.execute("SELECT id FROM stuck_jobs").fetchall()]
    assert known.b not in later


def test_job_throughput_counts_the_finished_tasks_per_job_and_overall(known: Known) -> None:
    per_job = rows("SELECT * FROM job_throughput WHERE job_id = %s", known.a)
    assert sum(r["done"] for r in per_job) == 7
    assert sum(r["failed"] for r in per_job) == 5
    assert sum(r["finished"] for r in per_job) == 12
    overall = rows("SELECT * FROM job_throughput WHERE job_id IS NULL")
    assert len(overall) == 60  # every minute of the hour, idle ones included
    assert sum(r["finished"] for r in overall) >= 12


def test_task_failures_ranks_error_messages_with_counts_and_an_example(known: Known) -> None:
    got = rows("SELECT * FROM task_failures WHERE job_id = %s ORDER BY rank", known.a)
    assert [(r["error"], r["tasks"], r["rank"]) for r in got] == [
        ("disk full", 3, 1),
        ("timeout", 2, 2),
    ]
    failed = rows(
        "SELECT task_no, error FROM job_tasks WHERE job_id = %s AND status = 'failed'", known.a
    )
    for r in got:
        assert r["example_task"] in {f["task_no"] for f in failed if f["error"] == r["error"]}


def test_reconcile_findings_recent_shows_findings_with_their_job(known: Known) -> None:
    got = rows("SELECT * FROM reconcile_findings_recent WHERE job_id = %s", known.b)
    assert [r["kind"] for r in got] == [f"idle_lost_{known.tag}", "counters_drift"]
    assert got[0]["name"] == f"dash-b-{known.tag}" and got[0]["job_status"] == "started"
    assert rows("SELECT * FROM reconcile_runs_recent WHERE id = %s", got[0]["run_id"])


# -- the read-only role -------------------------------------------------------


@pytest.fixture
def reader() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(get_settings().database_url, autocommit=True, row_factory=dict_row) as c:
        c.execute("SET ROLE jobsys_reader")
        yield c


def test_the_reader_role_has_no_login_and_no_password() -> None:
    (role,) = rows(
        "SELECT rolcanlogin, rolpassword, rolsuper FROM pg_authid WHERE rolname = 'jobsys_reader'"
    )
    assert role == {"rolcanlogin": False, "rolpassword": None, "rolsuper": False}


def test_the_reader_role_can_select_every_view(
    known: Known, reader: psycopg.Connection[Any]
) -> None:
    for view in VIEWS:
        reader.execute(f"SELECT * FROM {view}").fetchall()
    (row,) = reader.execute("SELECT done, failed FROM job_overview WHERE id = %s", (known.a,))
    assert (row["done"], row["failed"]) == (7, 5)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM jobs",
        "SELECT * FROM job_tasks",
        "SELECT * FROM job_events",
        "SELECT * FROM job_minutes",
        "SELECT * FROM reconcile_findings",
        "UPDATE jobs SET status = 'success' WHERE id = {a}",
        "UPDATE job_tasks SET status = 'done' WHERE job_id = {a}",
        "DELETE FROM jobs WHERE id = {a}",
        "DELETE FROM job_tasks WHERE job_id = {a}",
        "INSERT INTO reconcile_findings (kind, action) VALUES ('x', 'y')",
        "UPDATE active_jobs SET name = 'x' WHERE id = {a}",
        "DELETE FROM reconcile_findings_recent",
        "CREATE TABLE reader_was_here (x int)",
    ],
)
def test_the_reader_role_cannot_touch_tables_or_write(
    known: Known, reader: psycopg.Connection[Any], sql: str
) -> None:
    # Writes through a view fail before the privilege check: the views are
    # not updatable (joins, WITH) — and the role has SELECT only anyway.
    refused = (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectNotInPrerequisiteState)
    with pytest.raises(refused):
        reader.execute(sql.format(a=known.a))
    view = jobsys.get_job(known.a)
    assert (view.status, view.done, view.total) == ("started", 7, 20)


# -- the psql scripts ---------------------------------------------------------


def psql(script: str, *args: str) -> str:
    proc = subprocess.run(
        [PSQL, "-X", get_settings().database_url, *args, "-f", str(DASHBOARDS / script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr
    return proc.stdout


def line_of(output: str, needle: str) -> str:
    found = [line for line in output.splitlines() if needle in line]
    assert found, f"{needle!r} not in:\n{output}"
    return found[0]


def test_every_dashboard_script_runs_under_psql() -> None:
    scripts = sorted(p.name for p in DASHBOARDS.glob("*.sql"))
    assert scripts == ["active.sql", "failures.sql", "overview.sql", "reconcile.sql",
                       "stuck.sql", "throughput.sql"]  # fmt: skip
    for script in scripts:
        assert psql(script).startswith("jobsys: ")


def test_overview_and_active_scripts_show_the_known_job(known: Known) -> None:
    line = line_of(psql("overview.sql"), f"dash-a-{known.tag}")
    cells = [c.strip() for c in line.split("|")]
    assert cells[:10] == [str(known.a), f"dash-a-{known.tag}", "echo", "started",
                          "20", "7", "5", "0", "8", "60.0%"]  # fmt: skip
    active = line_of(psql("active.sql"), f"dash-a-{known.tag}")
    assert "############........ 60.0%" in active


def test_stuck_script_takes_a_threshold_and_shows_the_finding(known: Known) -> None:
    out = psql("stuck.sql", "-v", "stuck_after=5 minutes")
    assert out.startswith("jobsys: jobs without progress for 5 minutes")
    line = line_of(out, f"dash-b-{known.tag}")
    assert f"idle_lost_{known.tag}" in line and "marked_lost" in line
    assert f"dash-a-{known.tag}" not in out
    assert f"dash-b-{known.tag}" not in psql("stuck.sql", "-v", "stuck_after=1 hour")


def test_failures_throughput_and_reconcile_scripts_show_the_known_numbers(known: Known) -> None:
    failures = psql("failures.sql")
    assert [c.strip() for c in line_of(failures, "disk full").split("|")][3] == "3"
    assert [c.strip() for c in line_of(failures, "timeout").split("|")][3] == "2"
    throughput = psql("throughput.sql")
    per_job = [c.strip() for c in line_of(throughput, f" {known.a} |").split("|")]
    assert per_job[:5] == [str(known.a), "12", "7", "5", "0"]
    assert f"idle_lost_{known.tag}" in psql("reconcile.sql")


# -- jobsys logs ----------------------------------------------------------------


def jobsys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_jobsys_logs_shows_a_jobs_events_as_text_and_json(known: Known) -> None:
    text = jobsys_cli("logs", str(known.a))
    assert text.returncode == 0, text.stderr
    assert "job_submitted" in text.stdout and "status" in text.stdout
    out = jobsys_cli("logs", str(known.a), "--json")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["event"] for e in events][:2] == ["job_submitted", "status"]
    assert events[1]["detail"]["to"] == "started"
    assert {e["job_id"] for e in events} == {known.a}


def test_jobsys_logs_follow_ends_when_the_job_is_final() -> None:
    job_id = jobsys.submit("echo", counted_items(0), name="logs follow").id
    assert jobsys.cancel(job_id).status == "revoked"
    out = jobsys_cli("logs", str(job_id), "--follow", "--json")
    assert out.returncode == 0, out.stderr
    statuses = [e["detail"]["to"] for e in map(json.loads, out.stdout.splitlines())
                if e["event"] == "status"]  # fmt: skip
    assert statuses == ["canceling", "revoked"]


def test_jobsys_logs_of_an_unknown_job_is_one_line_on_stderr() -> None:
    out = jobsys_cli("logs", "987654321")
    assert out.returncode != 0
    assert out.stderr.strip() == "jobsys: job 987654321 not found"
