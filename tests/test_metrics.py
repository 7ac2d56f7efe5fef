"""Prometheus endpoints during a real job: the worker's, the processor's and the
exporter's, each checked against the ledger."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

import jobsys
from devtools.process import free_port
from jobsys.api.read import wait_until_final
from jobsys.dramatiq.messages import send_reconcile
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.pg.queries import Q

TASKS = 3_000
FAIL_EVERY = 20  # 150 tasks fail

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of an endpoint: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def families(port: int) -> set[str]:
    """The metric families an endpoint declares (with or without samples yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return {f.name for f in text_string_to_metric_families(resp.read().decode())}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def wait_for(port: int, timeout: float = 30) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def exporter_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jobsys.cli", "exporter", "--port", str(port)])
    try:
        wait_for(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_each_endpoint_counts_what_the_ledger_says(exporter_port: int, tmp_path: Path) -> None:
    worker_port, processor_port = free_port(), free_port()
    system = LocalSystem(workers=1, processors=1, concurrency=8, log_dir=tmp_path)
    system.worker_cmd += ["--metrics-port", str(worker_port)]
    system.processor_cmd += ["--metrics-port", str(processor_port)]
    # From here on only this test's worker records results (earlier tests'
    # workers are gone; it may still record a batch they left in the queue).
    started_at = time.time()
    with system:
        wait_for(worker_port), wait_for(processor_port)
        items = (
            json.dumps({"n": i, "sleep_ms": 1, **({"fail": True} if i % FAIL_EVERY == 0 else {})})
            for i in range(TASKS)
        )
        job_id = jobsys.submit("echo", items, name="metrics", failure_threshold=0.5).id

        # During the job: the exporter's per-job series add up to the total,
        # and the processor serves its families.
        seen_during = None
        deadline = time.monotonic() + 60
        while seen_during is None and time.monotonic() < deadline:
            exported = scrape(exporter_port)
            states = {s: value(exported, "jobsys_active_job_tasks", job_id=str(job_id),
                               pipeline="echo", state=s)
                      for s in ("pending", "done", "failed", "lost")}  # fmt: skip
            if states["done"] > 0:
                seen_during = states
            time.sleep(0.05)
        assert seen_during is not None, "the exporter showed the job while it ran"
        assert sum(seen_during.values()) == TASKS
        assert value(exported, "jobsys_exporter_database_up") == 1
        assert value(exported, "jobsys_jobs", status="started") >= 1
        declared = families(processor_port)
        for family in ("jobsys_tasks_run", "jobsys_task_duration_seconds",
                       "jobsys_result_batches_sent", "jobsys_result_batches_confirmed",
                       "jobsys_result_batches_resent", "jobsys_results_held"):  # fmt: skip
            assert family in declared, family

        final = wait_until_final(job_id, timeout=120)
        assert final.status == "success"

        # The worker runs a reconcile pass (as the scheduler would have it).
        send_reconcile()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with connection() as conn:
                row = conn.execute(
                    "SELECT count(*) AS n FROM reconcile_runs WHERE trigger = 'actor' "
                    "AND finished_at IS NOT NULL AND started_at >= to_timestamp(%s)",
                    (started_at,),
                ).fetchone()
            if row and row["n"] >= 1:
                break
            time.sleep(0.2)
        worker = scrape(worker_port)
        processor = scrape(processor_port)
        exported = scrape(exporter_port)

    since = (started_at,)
    with connection() as conn:
        ledger = conn.execute(Q.ledger_counts, {"job_id": job_id}).fetchone()
        # Every row a result batch moved since the worker started, whatever the job.
        moved = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'done') AS done,"
            " count(*) FILTER (WHERE status = 'failed') AS failed FROM job_tasks"
            " WHERE status IN ('done', 'failed') AND finished_at >= to_timestamp(%s)",
            since,
        ).fetchone()
        finalized = conn.execute(
            "SELECT count(*) AS n FROM job_events WHERE event = 'status'"
            " AND detail->>'reason' = 'all tasks accounted for' AND detail->>'to' = 'success'"
            " AND at >= to_timestamp(%s)",
            since,
        ).fetchone()
        findings = conn.execute(
            "SELECT count(*) AS n FROM reconcile_findings f"
            " JOIN reconcile_runs r ON r.id = f.run_id"
            " WHERE r.trigger = 'actor' AND r.started_at >= to_timestamp(%s)",
            since,
        ).fetchone()
    assert ledger is not None and moved is not None and finalized and findings is not None
    assert (ledger["done"], ledger["failed"]) == (TASKS - TASKS // FAIL_EVERY, TASKS // FAIL_EVERY)
    # Worker: rows moved = the ledger; finalizations; a latency per batch.
    assert value(worker, "jobsys_ledger_rows_moved_total", status="done") == moved["done"]
    assert value(worker, "jobsys_ledger_rows_moved_total", status="failed") == moved["failed"]
    assert value(worker, "jobsys_jobs_finalized_total", status="success") == finalized["n"] >= 1
    batches = total(worker, "jobsys_result_batches_recorded_total")
    assert batches > 0
    assert value(worker, "jobsys_result_batch_record_seconds_count") == batches
    assert total(worker, "jobsys_reconcile_findings_total") == findings["n"]
    # Exporter: the job is no longer active, and is counted among the finished.
    assert not any(n == "jobsys_active_job_tasks" and ("job_id", str(job_id)) in labels
                   for n, labels in exported)  # fmt: skip
    assert value(exported, "jobsys_jobs", status="success") >= 1
    # Processor: every task it ran, by outcome; one duration each; batches sent
    # and confirmed; nothing held once the job is final.
    done = value(processor, "jobsys_tasks_run_total", pipeline="echo", outcome="done")
    failed = value(processor, "jobsys_tasks_run_total", pipeline="echo", outcome="failed")
    # Runs, not tasks, of every job this processor served (earlier tests may
    # leave queued jobs it also runs): the rows recorded since it started,
    # plus at most one more run per task delivered again.
    with connection() as conn:
        again = conn.execute(
            "SELECT count(*) AS n FROM job_tasks WHERE deliveries > 1"
            " AND finished_at >= to_timestamp(%s)",
            since,
        ).fetchone()
    assert again is not None
    assert moved["done"] <= done <= moved["done"] + again["n"]
    assert moved["failed"] <= failed <= moved["failed"] + again["n"]
    assert value(processor, "jobsys_task_duration_seconds_count", pipeline="echo") == done + failed
    assert value(processor, "jobsys_result_batches_sent_total") >= 1
    assert value(processor, "jobsys_result_batches_confirmed_total") >= 1
    assert value(processor, "jobsys_results_held") == 0


def test_the_grafana_dashboard_uses_only_metrics_jobsys_serves() -> None:
    from jobsys import metrics

    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "deploy/grafana/jobsys.json").read_text()
    )
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"jobsys_\w+", target["expr"])
    }
    defined = {
        m._name + ("_total" if isinstance(m, Counter) else "")
        for m in vars(metrics).values()
        if isinstance(m, Counter | Gauge | Histogram)
    }
    defined |= {"jobsys_jobs", "jobsys_active_job_tasks", "jobsys_exporter_database_up"}
    assert used <= defined, used - defined
    assert all(name.startswith("jobsys_") for name in defined)
