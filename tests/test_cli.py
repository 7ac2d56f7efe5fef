"""The `jobsys` command as users run it: JSON shapes, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def jobsys_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `python -m jobsys.cli ARGS` in a real subprocess with this run's settings."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_submit_json_then_status_and_list_show_the_job() -> None:
    out = jobsys_cli("submit", "echo", "--count", "7", "--name", "cli job", "--json", check=True)
    created = json.loads(out.stdout)
    assert created["status"] == "queued" and created["total"] == 7
    status = json.loads(jobsys_cli("status", str(created["job_id"]), "--json", check=True).stdout)
    for key in ("job_id", "name", "pipeline", "status", "total", "done", "failed", "lost",
                "progress", "created_at", "started_at", "finished_at"):  # fmt: skip
        assert key in status
    assert status["name"] == "cli job" and status["pipeline"] == "echo"
    listed = json.loads(jobsys_cli("list", "--json", "--limit", "500", check=True).stdout)
    assert created["job_id"] in [j["job_id"] for j in listed]


def test_watch_exits_zero_when_the_job_succeeds(system: object) -> None:
    created = json.loads(jobsys_cli("submit", "echo", "--count", "300", "--json").stdout)
    watched = jobsys_cli("watch", str(created["job_id"]), "--timeout", "120")
    assert watched.returncode == 0, watched.stderr
    assert "success" in watched.stdout


def test_watch_exits_one_when_the_job_fails(system: object, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"fail": true}\n')
    created = json.loads(jobsys_cli("submit", "echo", "--items", str(items), "--json").stdout)
    watched = jobsys_cli("watch", str(created["job_id"]), "--timeout", "120")
    assert watched.returncode == 1
    assert "failure" in watched.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "999999"), "job 999999 not found"),
        (("cancel", "999999"), "job 999999 not found"),
        (("submit", "nope", "--count", "3"), "unknown pipeline 'nope'"),
        (("submit", "echo", "--count", "-1"), "-1 is not in the range 0<=x<="),
        (("submit", "echo", "--count", "3", "--failure-threshold", "2"), "failure-threshold"),
        (("submit", "echo", "--items", "/no/such/file.jsonl"), "cannot read items file"),
        (("submit", "echo"), "give exactly one of --items FILE or --count N"),
        (("status", "0"), "Invalid value"),
        (("status", "abc"), "Invalid value"),
        (("submit", "echo", "--count", "3", "--failure-threshold", "-0.5"), "failure-threshold"),
        (("submit", "echo", "--count", "3", "--name", "n" * 10_001), "name"),
        (("submit", "echo", "--count", "3", "--max-deliver", "0"), "max-deliver"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_a_nonzero_exit(
    args: tuple[str, ...], message: str
) -> None:
    proc = jobsys_cli(*args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_bad_items_line_is_reported_with_its_number(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"a": 1}\n{"a": 2}\n{oops}\n')
    proc = jobsys_cli("submit", "echo", "--items", str(items))
    assert proc.returncode == 1
    assert f"{items}:3: invalid JSON" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_long_name_with_sql_and_control_characters_is_stored_and_shown_exactly() -> None:
    shown = "x'); DROP TABLE jobs; -- %s $1 [red]é[/] [/bold]"
    name = shown + " \\ \t" + "n" * 9_000
    out = jobsys_cli("submit", "echo", "--count", "2", "--name", name, "--json", check=True)
    job_id = json.loads(out.stdout)["job_id"]
    status = json.loads(jobsys_cli("status", str(job_id), "--json", check=True).stdout)
    assert status["name"] == name
    # The table wraps long cells; the start of the name is shown literally.
    text = jobsys_cli("status", str(job_id), check=True).stdout
    assert shown in text.replace("│", "").replace("\n", "")
    listed = jobsys_cli("list", "--limit", "500", check=True)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr


def test_an_unreachable_database_is_one_clear_line() -> None:
    env = os.environ.copy()
    env["JOBSYS_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
    proc = subprocess.run(
        [sys.executable, "-m", "jobsys.cli", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Postgres not reachable" in proc.stderr and "make services" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_doctor_reports_every_service_ok(system: object) -> None:
    # A worker runs (`system`): doctor fails without one (tests/test_presence.py).
    deadline = time.monotonic() + 60
    while True:
        proc = jobsys_cli("doctor")
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)  # the worker announces itself within a second or two
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for service in ("postgres", "schema", "redis", "nats", "workers"):
        assert service in proc.stdout.lower()


def test_migrate_twice_changes_nothing() -> None:
    first = jobsys_cli("db", "migrate", check=True)
    second = jobsys_cli("db", "migrate", check=True)
    assert "up to date" in first.stdout and "up to date" in second.stdout
