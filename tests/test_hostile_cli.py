"""Every option of every command fed its bad values (missing paths, unwritable
directories, devices, inf/NaN, huge numbers, NUL and control characters, bytes that
are not UTF-8): each is one error line and a non-zero exit, never a traceback. And
`--output` writes a new regular file atomically, refuses devices, FIFOs and
directories, honours the umask, and says when it replaced a file; control characters
a person supplied are shown escaped."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import jobsys
from jobsys.api.items import counted_items
from jobsys.bootstrap.start import run_bootstrap
from jobsys.cli.main import main
from jobsys.worker.actors import process_results
from tests.helpers import make_started_job, pull_results
from tests.test_cli import jobsys_cli

HUGE = str(10**30)
# Not UTF-8: what a shell hands a program for the bytes b"\xff\xfe" (surrogate escapes).
NOT_UTF8 = os.fsdecode(b"bad\xff\xfename")


def _run(*args: str) -> Result:
    # Wide: a table shows whole names.
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "400"})


def _one_error_line(result: Result) -> str:
    """The error a command printed: one line, non-zero exit, no traceback."""
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), f"{type(result.exception).__name__}: {result.exception}"
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(("jobsys:", "Error:"))]
    assert len(lines) == 1, result.stderr
    if lines[0].startswith("jobsys:"):
        assert result.stderr.count("\n") == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def final_job() -> int:
    job_id = make_started_job(3)
    process_results.fn(job_id, pull_results(job_id, 3))
    assert jobsys.get_job(job_id).status == "success"
    return job_id


BAD = [
    # job ids: not a number, too big for any job, negative
    (["status", HUGE], "not in the range"),
    (["cancel", HUGE], "not in the range"),
    (["watch", HUGE], "not in the range"),
    (["logs", HUGE], "not in the range"),
    (["results", HUGE], "not in the range"),
    (["tasks", HUGE], "not in the range"),
    (["retry", HUGE], "not in the range"),
    (["inspect", HUGE], "not in the range"),
    (["status", "-1"], "'-1'"),
    (["status", NOT_UTF8], "is not a valid integer"),
    # numbers: inf, NaN, huge, negative
    (["prune", "--older-than", "inf"], "--older-than"),
    (["prune", "--older-than", "nan"], "--older-than"),
    (["prune", "--older-than", "1e308"], "--older-than"),
    (["prune", "--older-than", "-1"], "older-than"),
    (["submit", "echo", "--count", "3", "--failure-threshold", "nan"], "--failure-threshold"),
    (["submit", "echo", "--count", "3", "--failure-threshold", "inf"], "--failure-threshold"),
    (["submit", "echo", "--count", "3", "--task-timeout", "nan"], "--task-timeout"),
    (["submit", "echo", "--count", "3", "--task-timeout", "inf"], "--task-timeout"),
    (["submit", "echo", "--count", "3", "--task-timeout", "1e308"], "task-timeout"),
    (["submit", "echo", "--count", HUGE], "--count"),
    (["submit", "echo", "--count", "3", "--max-deliver", HUGE], "max-deliver"),
    (["submit", "echo", "--count", "3", "--max-in-flight", HUGE], "max-in-flight"),
    (["watch", "1", "--timeout", "nan"], "--timeout"),
    (["watch", "1", "--timeout", "-5"], "--timeout"),
    (["top", "--interval", "nan"], "--interval"),
    (["top", "--interval", "inf"], "--interval"),
    (["list", "--limit", HUGE], "--limit"),
    (["tasks", "1", "--limit", HUGE], "--limit"),
    (["process", "--concurrency", HUGE], "--concurrency"),
    (["process", "--batch-size", "nan"], "--batch-size"),
    (["process", "--server", "ftp://x"], "--server"),
    (["process", "--server", "http://127.0.0.1:9", "--token", "nope"], "--token"),
    (["process", "--server", "http://127.0.0.1:9", "--token", "a\x00b"], "--token"),
    (
        [
            "process",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "jst_" + "A" * 43,
            "--pipelines",
            "a\x00b",
        ],
        "pipelines",
    ),
    (["worker", "--threads", HUGE], "--threads"),
    (["exporter", "--port", HUGE], "--port"),
    (["demo", "--count", HUGE], "--count"),
    # text: NUL, control characters, not UTF-8
    (["submit", "echo", "--count", "1", "--name", "a\x00b"], "name"),
    (["submit", "echo", "--count", "1", "--name", NOT_UTF8], "name"),
    (["submit", NOT_UTF8, "--count", "1"], "pipeline"),
    (["submit", "a\x00b", "--count", "1"], "pipeline"),
    (["submit", "echo", "--count", "1", "--on-complete", "http://%00/"], "host"),
    (["submit", "echo", "--count", "1", "--on-complete", NOT_UTF8], "on-complete"),
    (["tasks", "1", "--status", NOT_UTF8], "status"),
    (["list", "--status", "a\x00b"], "--status"),
    # paths: missing, a directory, a device, not UTF-8
    (["submit", "echo", "--items", "/nonexistent/d/items.jsonl"], "items"),
    (["submit", "echo", "--items", "/"], "directory"),
    (["submit", "echo", "--items", f"/tmp/{NOT_UTF8}"], "items"),
]


@pytest.mark.parametrize(("args", "says"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_a_bad_value_is_one_error_line(args: list[str], says: str) -> None:
    line = _one_error_line(_run(*args))
    assert says in line, line
    assert "\x00" not in line and "\udcff" not in line


def test_bad_values_of_the_commands_that_need_a_job(final_job: int, tmp_path: Path) -> None:
    job = str(final_job)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (["retry", job, "--error-like", "a\x00b"], "error-like"),
        (["retry", job, "--error-like", NOT_UTF8], "error-like"),
        (["retry", job, "--status", "bogus"], "status"),
        (["tasks", job, "--status", "bogus"], "status"),
        (["results", job, "--output", "/nonexistent/d/f.jsonl"], "does not exist"),
        (["results", job, "--output", "/proc/jobsys-f.jsonl"], "cannot write"),
        (["results", job, "--output", "/dev/full"], "not a regular file"),
        (["results", job, "--output", str(fifo)], "not a regular file"),
        (["results", job, "--output", str(tmp_path)], "directory"),
        (["results", job, "--output", f"{tmp_path}/{NOT_UTF8}/x"], "does not exist"),
    ]
    for args, says in cases:
        line = _one_error_line(_run(*args))
        assert says in line, (args, line)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_the_reported_cases_are_one_line_from_a_real_process() -> None:
    for args in (["results", "1", "--output", "/nonexistent/d/f.jsonl"],
                 ["prune", "--older-than", "inf"], ["prune", "--older-than", "1e308"]):  # fmt: skip
        proc = jobsys_cli(*args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") <= 4, proc.stderr  # click's usage error, or one line


def test_output_writes_a_new_file_honouring_the_umask_and_says_when_it_replaced_one(
    final_job: int, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    old = os.umask(0o027)
    try:
        first = _run("results", str(final_job), "--output", str(out))
    finally:
        os.umask(old)
    assert first.exit_code == 0, first.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert "replaced" not in first.stderr
    assert len(out.read_text().splitlines()) == 3
    out.chmod(0o600)
    again = _run("results", str(final_job), "--output", str(out))
    assert again.exit_code == 0, again.stderr
    assert f"replaced the existing {out}" in again.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # a replaced file keeps its mode
    # Through a symlink: the file it points at is written, the link stays.
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    via = _run("results", str(final_job), "--output", str(link))
    assert via.exit_code == 0, via.stderr
    assert link.is_symlink() and len(out.read_text().splitlines()) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_control_characters_a_person_supplied_are_shown_escaped(tmp_path: Path) -> None:
    name = "a\x1b[2J\x1b[31mEVIL\u202e\x9b"
    view = jobsys.submit("echo", counted_items(1), name=name)
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"fail": True}) + "\n")
    assert run_bootstrap(view.id) == "published"
    for args in (["list", "--limit", "500"], ["status", str(view.id)],
                 ["list", "--limit", "500", "--json"], ["status", str(view.id), "--json"],
                 ["logs", str(view.id)], ["logs", str(view.id), "--json"],
                 ["top", "--once"]):  # fmt: skip
        out = _run(*args)
        assert out.exit_code == 0, out.stderr
        for raw in ("\x1b", "\u202e", "\x9b"):
            assert raw not in out.stdout, (args, out.stdout)
    shown = _run("list", "--limit", "500").stdout
    assert "a\\x1b[2J\\x1b[31mEVIL\\u202e\\x9b" in shown.replace("│", "").replace("\n", "")
    # JSON keeps the exact value (escaped the JSON way).
    listed = json.loads(_run("list", "--limit", "500", "--json").stdout)
    assert name in [j["name"] for j in listed]
