"""`jobsys results` and `jobsys tasks` against real Postgres and NATS: byte-for-byte
export of every task status, counts that equal the counters, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import jobsys
from jobsys.bootstrap.start import run_bootstrap
from jobsys.pg.db import connection
from jobsys.reconciler import mark_lost
from jobsys.recording.counting import record_results
from tests.helpers import assert_counters_match_ledger, counters
from tests.test_cli import jobsys_cli

# Payloads exactly as an items file gives them: odd spacing, key order,
# escapes, floats that a round trip through Python would rewrite.
PAYLOADS = [
    '{"n": 0, "s": "caf\\u00e9"}',
    '{"b":1,"a":2}',
    '{ "f" : 1.0, "e": 1e5 , "neg": -0.0}',
    '{"nul": "x\\u0000y", "tab": "a\\tb"}',
    '{"q": "\\"quoted\\" \\\\ back\\/slash"}',
    '{"uni": "日本語 😀", "nested": {"l": [1, [2, [3]]], "t": true, "z": null}}',
    '{"big": 123456789012345678901234567890, "small": 1.5e-300}',
    '{"empty": {}, "arr": []}',
    '{"n": 8}',
    '{"n": 9, "sp":   "  spaced  "}',
    '{"n": 10}',
    '{"n": 11}',
]
# Results as a worker stored them, equally unusual; tasks 0-3 end done.
RESULTS = [
    '{"z": 1, "a": [1.0, 2e3]}',
    '{"s": "\\u0000 nul", "é": "ü"}',
    '{"emoji": "😀", "k": {"n": null}}',
    '{"big": 123456789012345678901234567890}',
]
ERRORS = {4: 'ValueError: bad "input" ü', 5: "Timeout after 30s"}
# What a processor stores beside a failure an exception made (task 4's): its class
# and traceback, several lines with quotes and commas. Task 5's reason is no exception.
ERROR_TYPE = "ValueError"
ERROR_TRACE = (
    'Traceback (most recent call last):\n  File "pipe.py", line 3, in run\n'
    '    raise ValueError(\'bad "input" ü\')\nValueError: bad "input" ü\n'
)
# The columns of every export, in order (then job / origin_task, payload).
COLUMNS = ["task", "status", "result", "error", "deliveries", "finished_at", "error_type",
           "error_trace"]  # fmt: skip
LOST = [6, 7]
CANCELLED = [8, 9, 10, 11]


@dataclass(frozen=True)
class EveryStatus:
    """A revoked job whose tasks ended done, failed, lost and cancelled."""

    job_id: int


@pytest.fixture(scope="module")
def every_status(services: str) -> EveryStatus:
    job = jobsys.submit("echo", iter(PAYLOADS), name="every status")
    job_id = job.id
    assert run_bootstrap(job_id) == "published"
    rows = [(i, "done", text, None, i + 1) for i, text in enumerate(RESULTS)]
    rows += [(4, "failed", None, ERRORS[4], 5, ERROR_TYPE, ERROR_TRACE),
             (5, "failed", None, ERRORS[5], 5)]  # fmt: skip
    with connection() as conn:
        record_results(conn, job_id, rows)
        with conn.transaction():
            assert mark_lost(conn, job_id, LOST, "delivered max_deliver times") == 2
    assert jobsys.cancel(job_id).status == "revoked"
    assert counters(job_id) == {"done": 4, "failed": 2, "lost": 2, "cancelled": 4, "total": 12}
    assert_counters_match_ledger(job_id)
    return EveryStatus(job_id)


def _status_of(task: int) -> str:
    if task < len(RESULTS):
        return "done"
    if task in ERRORS:
        return "failed"
    return "lost" if task in LOST else "cancelled"


def test_results_of_every_status_round_trip_payloads_and_results_byte_for_byte(
    every_status: EveryStatus,
) -> None:
    proc = jobsys_cli("results", str(every_status.job_id), "--status", "all", "--with-payload")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(PAYLOADS)
    for task, line in enumerate(lines):
        obj = json.loads(line)
        assert list(obj) == [*COLUMNS, "payload"]
        assert obj["task"] == task and obj["status"] == _status_of(task)
        # The stored bytes appear verbatim in the line.
        assert f'"payload": {PAYLOADS[task]}' in line
        if task < len(RESULTS):
            assert f'"result": {RESULTS[task]},' in line
            assert obj["error"] is None and obj["deliveries"] == task + 1
        else:
            assert '"result": null,' in line
        if task in ERRORS:
            assert obj["error"] == ERRORS[task]
        # The exception's class and traceback where a processor stored them.
        assert obj["error_type"] == (ERROR_TYPE if task == 4 else None)
        assert obj["error_trace"] == (ERROR_TRACE if task == 4 else None)
        if task in LOST:
            assert obj["error"] == "delivered max_deliver times"
        assert obj["finished_at"] is not None
    assert proc.stderr == (
        f"job {every_status.job_id}: wrote 12 tasks (done 4, failed 2, lost 2, cancelled 4) "
        "to stdout; equal to the job's counters\n"
    )


def test_results_default_to_done_tasks_and_say_their_count_equals_the_counter(
    every_status: EveryStatus,
) -> None:
    proc = jobsys_cli("results", str(every_status.job_id))
    assert proc.returncode == 0, proc.stderr
    tasks = [json.loads(line)["task"] for line in proc.stdout.splitlines()]
    assert tasks == [0, 1, 2, 3]
    assert proc.stderr == (
        f"job {every_status.job_id}: wrote 4 tasks (done 4) to stdout; "
        "equal to the job's counters\n"
    )


def test_results_as_csv_into_a_file_keep_the_stored_bytes(
    every_status: EveryStatus, tmp_path: Path
) -> None:
    out = tmp_path / "all.csv"
    proc = jobsys_cli("results", str(every_status.job_id), "--status", "all", "--format", "csv",
                      "--with-payload", "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert f"to {out}" in proc.stderr
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert rows[0] == [*COLUMNS, "payload"]
    body = rows[1:]
    assert [r[-1] for r in body] == PAYLOADS
    # A traceback's lines, quotes and commas survive CSV quoting.
    assert [r[6:8] for r in body if r[1] == "failed"] == [[ERROR_TYPE, ERROR_TRACE], ["", ""]]
    assert [r[2] for r in body[: len(RESULTS)]] == RESULTS
    assert [r[1] for r in body] == [_status_of(t) for t in range(len(PAYLOADS))]
    assert not list(tmp_path.glob("*.partial"))


def test_the_library_yields_the_same_tasks_parsed_or_raw(every_status: EveryStatus) -> None:
    raw = list(jobsys.results(every_status.job_id, "all", with_payload=True, raw=True))
    assert [r["payload"] for r in raw] == PAYLOADS
    assert [r["result"] for r in raw[: len(RESULTS)]] == RESULTS
    parsed = list(jobsys.results(every_status.job_id, ["failed", "lost"]))
    assert [(r["task"], r["status"]) for r in parsed] == [(4, "failed"), (5, "failed"),
                                                          (6, "lost"), (7, "lost")]  # fmt: skip
    done = list(jobsys.results(every_status.job_id))
    assert done[0]["result"] == json.loads(RESULTS[0])
    assert (parsed[0]["error_type"], parsed[0]["error_trace"]) == (ERROR_TYPE, ERROR_TRACE)


def test_tasks_lists_failed_tasks_with_their_errors(every_status: EveryStatus) -> None:
    proc = jobsys_cli("tasks", str(every_status.job_id), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["job_id"] == every_status.job_id and out["statuses"] == ["failed"]
    assert out["count"] == 2
    assert [(t["task"], t["status"], t["error"], t["deliveries"]) for t in out["tasks"]] == [
        (4, "failed", ERRORS[4], 5),
        (5, "failed", ERRORS[5], 5),
    ]
    assert set(out["tasks"][0]) == {"task", "status", "error", "deliveries", "finished_at",
                                    "origin_task", "next_attempt_at", "last_error",
                                    "error_type", "error_trace"}  # fmt: skip
    args = ("tasks", str(every_status.job_id), "--status", "failed,lost", "--limit", "3")
    limited = json.loads(jobsys_cli(*args, "--json", check=True).stdout)
    assert limited["count"] == 4 and [t["task"] for t in limited["tasks"]] == [4, 5, 6]
    table = jobsys_cli("tasks", str(every_status.job_id), check=True).stdout
    assert "Timeout after 30s" in table


def test_tasks_by_error_groups_with_counts_and_an_example(every_status: EveryStatus) -> None:
    proc = jobsys_cli("tasks", str(every_status.job_id), "--status", "failed,lost",
                      "--by-error", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["count"] == 4 and out["distinct_errors"] == 3
    first = {k: out["errors"][0][k] for k in ("error", "tasks", "example_task", "statuses")}
    assert first == {"error": "delivered max_deliver times", "tasks": 2,
                     "example_task": 6, "statuses": ["lost"]}  # fmt: skip
    # Grouped by the message with what varies taken out; each group shows its
    # example task's own error as it was.
    assert {g["example_error"] for g in out["errors"][1:]} == set(ERRORS.values())
    assert {g["error"] for g in out["errors"][1:]} == {
        "Timeout after <n>s",
        'ValueError: bad "<…>" ü',
    }
    text = jobsys_cli("tasks", str(every_status.job_id), "--by-error", check=True).stdout
    assert "2 distinct error(s)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("results", "999999"), "job 999999 not found"),
        (("tasks", "999999"), "job 999999 not found"),
        (("results", "1", "--status", "bogus"), "Invalid value for '--status'"),
        (("tasks", "1", "--status", "bogus"), "status: bogus is not"),
        (("results", "0"), "Invalid value"),
    ],
)
def test_results_and_tasks_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    proc = jobsys_cli(*args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if proc.returncode == 1:
        assert proc.stderr.count("\n") == 1


def test_results_of_a_running_job_equal_its_counters_in_one_snapshot() -> None:
    # Nothing finished yet: every task pending, and "all" says so.
    job = jobsys.submit("echo", iter(['{"n": 1}', '{"n": 2}']))
    proc = jobsys_cli("results", str(job.id), "--status", "all")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["status"] for line in proc.stdout.splitlines()] == ["pending"] * 2
    assert "(pending 2, done 0, failed 0, lost 0, cancelled 0)" in proc.stderr
    jobsys.cancel(job.id)


@pytest.mark.parametrize("command", ["results", "tasks", "retry", "prune", "submit"])
def test_every_new_command_has_help_with_an_example(command: str) -> None:
    from click.testing import CliRunner

    from jobsys.cli.main import main

    out = CliRunner().invoke(main, [command, "--help"])
    assert out.exit_code == 0
    assert "Example" in out.output
    assert f"jobsys {command} " in out.output


def test_results_show_a_progress_bar_on_a_terminal(
    every_status: EveryStatus, tmp_path: Path
) -> None:
    master, slave = pty.openpty()
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobsys.cli", "results", str(every_status.job_id), "--status", "all",
         "--output", str(out)],
        stdin=slave, stdout=slave, stderr=slave, env=os.environ.copy(),
    )  # fmt: skip
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(60) == 0
    text = shown.decode(errors="replace")
    assert "12/12" in text and "100%" in text
    assert "wrote 12 tasks" in text
    assert len(out.read_text().splitlines()) == 12
