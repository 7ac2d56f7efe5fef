"""A CLI that explains itself: one line with the cause for every error, stdin items,
whole cells when the output is not a terminal, retry hints, shell completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from psycopg.conninfo import make_conninfo

LONG_NAME = "thumbnails of every photo in the archive, resized twice"


def cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`jobsys ARGS` in a subprocess whose stdout and stderr are pipes, not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args], input=stdin, capture_output=True,
        text=True, env={**os.environ, "COLUMNS": "80", **env}, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url_part", "cause"),
    [
        ({"dbname": "no_such_database_x"}, 'database "no_such_database_x" does not exist'),
        ({"user": "no_such_role_x"}, 'role "no_such_role_x" does not exist'),
    ],
)
def test_a_bad_database_url_fails_fast_with_postgres_own_reason(
    url_part: dict[str, str], cause: str
) -> None:
    url = make_conninfo(os.environ["JOBSYS_DATABASE_URL"], **url_part)
    proc = cli("status", "1", JOBSYS_DATABASE_URL=url)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jobsys: Postgres refused the connection") and cause in lines[0]
    # Refused by the first plain connection, before any pool waits (how long
    # that takes is measured, not asserted: issue 22's note).
    assert "psycopg.pool" not in proc.stderr


def test_items_dash_reads_standard_input() -> None:
    proc = cli("submit", "echo", "--items", "-", "--json", stdin='{"n": 1}\n\n{"n": 2}\n')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == 2
    bad = cli("submit", "echo", "--items", "-", stdin='{"n": 1}\nnope\n')
    assert bad.returncode == 1 and bad.stderr.startswith("jobsys: <stdin>:2: invalid JSON")


def test_tables_keep_whole_cells_when_not_on_a_terminal() -> None:
    created = json.loads(cli("submit", "echo", "--count", "2", "--name", LONG_NAME,
                             "--json").stdout)  # fmt: skip
    listed = cli("list", "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert LONG_NAME in listed.stdout and "…" not in listed.stdout
    top = cli("top", "--once")
    assert top.returncode == 0, top.stderr
    row = next(line for line in top.stdout.splitlines() if LONG_NAME[:24] in line)
    assert row.split()[0] == str(created["job_id"]), top.stdout
    assert "…" not in top.stdout
    cli("cancel", str(created["job_id"]))


def test_retry_of_a_job_without_failures_names_what_it_could_retry() -> None:
    created = json.loads(cli("submit", "echo", "--count", "3", "--json").stdout)
    job_id = str(created["job_id"])
    assert cli("cancel", job_id).returncode == 0
    proc = cli("retry", job_id)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert f"job {job_id} has no failed/lost task to retry" in line, line
    assert "3 cancelled" in line and "--status cancelled" in line, line
    again = cli("retry", job_id, "--status", "cancelled", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["retried"] == {"cancelled": 3}


def test_version_and_shell_completion() -> None:
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("jobsys "), version.stderr
    script = subprocess.run(
        [sys.executable, "-c", "from jobsys.cli.main import main; main(prog_name='jobsys')"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "_JOBSYS_COMPLETE": "bash_source"},
    )  # fmt: skip
    assert "_JOBSYS_COMPLETE=bash_complete" in script.stdout, script.stdout + script.stderr
