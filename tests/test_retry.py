"""`jobsys retry` against real Postgres and NATS: a two-generation retry chain,
`results --latest` across it, lineage in status and list, refusals in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jobsys
from jobsys.bootstrap.start import run_bootstrap
from jobsys.worker.actors import process_results
from tests.helpers import assert_counters_match_ledger, make_started_job, pull_results
from tests.test_cli import jobsys_cli

PAYLOADS = [f'{{"n": {i}, "name": "item {i}"}}' for i in range(6)]


def _run(job_id: int, n: int, fail: set[int]) -> str:
    """Run a bootstrapped job's tasks in-process (echo), failing the given task numbers."""
    items = pull_results(job_id, n, fail=fail)
    assert len(items) == n
    process_results.fn(job_id, items)
    view = jobsys.get_job(job_id)
    assert_counters_match_ledger(job_id)
    return view.status


def _latest(job_id: int, *args: str) -> list[dict[str, object]]:
    proc = jobsys_cli("results", str(job_id), "--latest", *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_retry_chain_of_two_generations_and_results_latest() -> None:
    root = jobsys.submit("echo", iter(PAYLOADS), name="chain").id
    assert run_bootstrap(root) == "published"
    assert _run(root, 6, fail={1, 4}) == "failure"

    # Generation 1: the two failed tasks, as a child of the (unchanged) root.
    proc = jobsys_cli("retry", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)
    assert first == {"job_id": first["job_id"], "parent_id": root, "root_id": root,
                     "status": "queued", "total": 2, "retried": {"failed": 2}}  # fmt: skip
    gen1 = first["job_id"]
    assert jobsys.get_job(root).status == "failure"
    assert run_bootstrap(gen1) == "published"
    assert _run(gen1, 2, fail={1}) == "failure"  # gen1 task 1 is original task 4

    # Generation 2: what still failed, retried from the child.
    second = json.loads(jobsys_cli("retry", str(gen1), "--json", check=True).stdout)
    gen2 = second["job_id"]
    assert (second["parent_id"], second["root_id"], second["total"]) == (gen1, root, 1)

    # Before gen2 runs, original task 4's latest outcome is gen2's pending task.
    rows = _latest(root, "--status", "all")
    assert [(r["task"], r["status"], r["job"]) for r in rows] == [
        (0, "done", root), (1, "done", gen1), (2, "done", root),
        (3, "done", root), (4, "pending", gen2), (5, "done", root),
    ]  # fmt: skip
    assert list(rows[0]) == ["task", "status", "result", "error", "deliveries", "finished_at",
                             "error_type", "error_trace", "job"]  # fmt: skip

    assert run_bootstrap(gen2) == "published"
    assert _run(gen2, 1, fail=set()) == "success"

    rows = _latest(root, "--with-payload")
    assert [(r["task"], r["job"]) for r in rows] == [
        (0, root),
        (1, gen1),
        (2, root),
        (3, root),
        (4, gen2),
        (5, root),
    ]
    # Every original task's payload and (echo) result, whichever job ran it last.
    for row in rows:
        assert row["payload"] == json.loads(PAYLOADS[row["task"]])  # type: ignore[index]
        assert row["result"] == row["payload"]
    proc = jobsys_cli("results", str(root), "--latest")
    assert "and 2 retries: wrote 6 tasks by latest outcome (done 6)" in proc.stderr

    # From the middle of the chain: its own tasks, by original number.
    mid = _latest(gen1, "--status", "all")
    assert [(r["task"], r["status"], r["job"]) for r in mid] == [(1, "done", gen1),
                                                                (4, "done", gen2)]  # fmt: skip
    # A retry's own export says which original task each of its tasks is.
    plain = jobsys_cli("results", str(gen2), "--with-payload", check=True).stdout
    assert json.loads(plain)["origin_task"] == 4
    assert f'"payload": {PAYLOADS[4]}' in plain

    # Lineage in status and list.
    status_root = json.loads(jobsys_cli("status", str(root), "--json", check=True).stdout)
    assert status_root["retries"] == [gen1] and status_root["parent_id"] is None
    status_gen2 = json.loads(jobsys_cli("status", str(gen2), "--json", check=True).stdout)
    assert (status_gen2["parent_id"], status_gen2["root_id"]) == (gen1, root)
    listed = json.loads(jobsys_cli("list", "--json", "--limit", "20", check=True).stdout)
    parents = {j["job_id"]: j["parent_id"] for j in listed}
    assert parents[gen1] == root and parents[gen2] == gen1 and parents[root] is None
    wide = {**os.environ, "COLUMNS": "200"}
    table = subprocess.run([sys.executable, "-m", "jobsys.cli", "list", "--limit", "3"], env=wide,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "parent" in table
    (row,) = [line for line in table.splitlines() if line.startswith(f"│ {gen2} ")]
    assert row.split("│")[2].strip() == str(gen1)


def test_retry_by_error_text_and_status() -> None:
    job_id = make_started_job(5)
    items = pull_results(job_id, 5, fail={0, 2})
    items[2] = {**items[2], "error": "Timeout talking to the API"}
    process_results.fn(job_id, items)
    made = jobsys_cli("retry", str(job_id), "--error-like", "TIMEOUT", "--json", check=True)
    child = json.loads(made.stdout)
    assert child["total"] == 1 and child["retried"] == {"failed": 1}
    assert [r["task"] for r in jobsys.results(child["job_id"], "all")] == [0]
    assert [r["origin_task"] for r in jobsys.results(child["job_id"], "all")] == [2]
    text = jobsys_cli("retry", str(job_id), "--status", "failed", check=True).stdout
    assert text.startswith("job ") and f"retry of job {job_id} with 2 tasks (failed 2)" in text


def test_retry_refuses_with_one_line() -> None:
    running = make_started_job(3)
    finished = make_started_job(2)
    process_results.fn(finished, pull_results(finished, 2))
    cases = [
        (("retry", str(running)), f"job {running} is started: only a final job can be retried"),
        (("retry", "999999"), "job 999999 not found"),
        (("retry", str(finished)), f"job {finished} has no failed/lost task to retry"),
        (("retry", str(finished), "--status", "done"), "done is not one of failed, lost"),
        (("retry", str(finished), "--error-like", "x"), "whose error is like 'x'"),
    ]
    for args, message in cases:
        proc = jobsys_cli(*args)
        assert proc.returncode == 1, (args, proc.stdout)
        assert message in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    # The refused retry left the running job as it was and made no job.
    assert jobsys.get_job(running).status == "started"
    assert json.loads(jobsys_cli("status", str(finished), "--json").stdout)["retries"] == []
